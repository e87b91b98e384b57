"""The continual-learning methods (issue 20): Continual Backprop, shrink and perturb, L2 toward the initial
weights and a fresh start, each against a computation of its own formula made here, and each through a
checkpoint resume of a real run; Continual Backprop under 2 processes."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from revival_reports import report_with_dead
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import REPO, launch_findings, tiny_overrides
from reviveformer.checkpoint import read_state, write_state
from reviveformer.config import load_config
from reviveformer.errors import ConfigError
from reviveformer.revival import REVIVERS, ContinualBackprop, FreshStart, L2Init, ShrinkPerturb, build_reviver

STRIDE = 1_000_003  # the seed stride of every method that draws: seed * STRIDE + (step or revival index)


def gpt2_config(n_layer: int = 1, n_embd: int = 8, n_inner: int = 6) -> GPT2Config:
    # GELU: no unit is exactly silent, so no two utilities tie and the lowest ones are unambiguous
    return GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=2,
        n_positions=16,
        vocab_size=32,
        n_inner=n_inner,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def build(config: GPT2Config, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).train()


def ids(k: int) -> torch.Tensor:
    return torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(k))


def step(model: GPT2LMHeadModel, opt: torch.optim.Optimizer, k: int, reviver=None) -> None:
    batch = ids(k)
    model(input_ids=batch, labels=batch).loss.backward()
    if reviver is not None:
        reviver.before_optimizer_step(model)
    opt.step()
    opt.zero_grad()
    if reviver is not None:
        reviver.after_optimizer_step(model)


def report(n_layer: int = 1, units: int = 6):
    return report_with_dead({i: [] for i in range(n_layer)}, units)


# ------------------------------------------------------------------------------------- Continual Backprop
def test_cbp_utility_ages_and_replacement_equal_a_hand_computation() -> None:
    """Three steps on one 6-unit layer, utility and choice recomputed in numpy from the activations and the
    outgoing weights seen here. rate 0.3, maturity 1: step 1 none mature; step 2 all 6 mature, 1.8 -> 1 replaced
    (0.8 carried); step 3 5 mature, 0.8 + 1.5 = 2.3 -> 2 replaced (0.3 carried)."""
    rate, decay, maturity = 0.3, 0.9, 1
    model = build(gpt2_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cbp = ContinualBackprop(rate, decay, maturity, seed=5)
    cbp.attach(model, opt)
    seen: list[torch.Tensor] = []
    model.transformer.h[0].mlp.act.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    u, age, acc = np.zeros(6), np.zeros(6, dtype=int), 0.0
    replaced_counts = []
    for k in range(3):
        seen.clear()
        batch = ids(k)
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
        h = np.abs(seen[0].double().numpy()).reshape(-1, 6).mean(0)  # mean |h| over the step's positions
        w_out = model.transformer.h[0].mlp.c_proj.weight.detach().double().numpy()  # (units, n_embd)
        u = decay * u + (1 - decay) * h * np.abs(w_out).sum(1)
        age += 1
        mature = age > maturity
        acc += rate * mature.sum()
        n = int(acc)
        acc -= n
        corrected = u / (1 - decay**age)
        expected = sorted(np.argsort(np.where(mature, corrected, np.inf))[:n].tolist())
        cbp.after_optimizer_step(model)
        c_proj = model.transformer.h[0].mlp.c_proj.weight.detach()
        replaced = [j for j in range(6) if not c_proj[j].any()]
        assert replaced == expected
        replaced_counts.append(n)
        u[expected], age[expected] = 0.0, 0
        np.testing.assert_allclose(cbp.utility[0].numpy(), u, rtol=1e-5, atol=1e-12)
        assert cbp.ages[0].tolist() == age.tolist()
        assert cbp.accumulated[0] == pytest.approx(acc)
    assert replaced_counts == [0, 1, 2]
    metrics = cbp.revive(model, report(), opt)
    assert metrics["revival/replaced_units"] == 3.0 and metrics["revival/replaced_total"] == 3.0
    assert cbp.revive(model, report(), opt)["revival/replaced_units"] == 0.0  # counted since the last revival


def test_cbp_fresh_units_come_from_the_init_and_their_adam_state_is_zeroed() -> None:
    """maturity 0, rate 0.5: half of 256 units replaced at the first step. Their incoming weights are the
    seeded draw normal(0, initializer_range), their bias and outgoing weights zero, and the AdamW moments of
    exactly those entries zero."""
    model = build(gpt2_config(n_embd=64, n_inner=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cbp = ContinualBackprop(replacement_rate=0.5, decay_rate=0.99, maturity_threshold=0, seed=2)
    cbp.attach(model, opt)
    step(model, opt, 0, cbp)
    mlp = model.transformer.h[0].mlp
    idx = torch.tensor([j for j in range(256) if not mlp.c_proj.weight[j].any()])
    assert idx.numel() == 128 and cbp.replaced_total == 128
    rest = torch.tensor(sorted(set(range(256)) - set(idx.tolist())))
    fresh = mlp.c_fc.weight.detach()[:, idx]
    drawn = torch.randn((64, 128), generator=torch.Generator().manual_seed(2 * STRIDE + 1)) * 0.02
    assert torch.equal(fresh, drawn)
    assert abs(float(fresh.std()) - 0.02) < 0.001 and abs(float(fresh.mean())) < 0.001
    assert not mlp.c_fc.bias[idx].any()
    for param, by_unit in ((mlp.c_fc.weight, lambda t: t.t()), (mlp.c_fc.bias, lambda t: t)):
        for key in ("exp_avg", "exp_avg_sq"):
            state = by_unit(opt.state[param][key])
            assert not state[idx].any() and bool((state[rest] != 0).all()), key
    sq = opt.state[mlp.c_proj.weight]["exp_avg_sq"]
    assert not sq[idx].any() and bool((sq[rest] != 0).all())
    assert cbp.ages[0][idx].eq(0).all() and cbp.ages[0][rest].eq(1).all()
    assert not cbp.utility[0][idx].any()


def test_cbp_skips_eval_forwards_and_state_round_trips(tmp_path) -> None:
    """Evaluation forwards do not count; a reviver restored from a checkpoint mid-run (utility, ages, the
    fractional count, a step's pending sums) continues exactly as the original."""
    model = build(gpt2_config(n_embd=16, n_inner=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    a = ContinualBackprop(replacement_rate=0.1, decay_rate=0.9, maturity_threshold=2, seed=1)
    a.attach(model, opt)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids(99))
    model.train()
    assert a._sums is not None and not a._sums.any()
    for k in range(4):
        step(model, opt, k, a)
    batch = ids(4)
    model(input_ids=batch, labels=batch).loss.backward()  # step 5's forward: its sums are pending
    write_state(tmp_path, {"reviver": a.state_dict()})
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    b = ContinualBackprop(replacement_rate=0.1, decay_rate=0.9, maturity_threshold=2, seed=0)
    b.attach(twin, twin_opt)
    b.load_state_dict(read_state(tmp_path)["reviver"])
    for m, o, r in ((model, opt, a), (twin, twin_opt, b)):
        o.step()
        o.zero_grad()
        r.after_optimizer_step(m)
        for k in range(5, 9):
            step(m, o, k, r)
    assert a.replaced_total == b.replaced_total > 0
    for i in a.utility:
        assert torch.equal(a.utility[i], b.utility[i]) and torch.equal(a.ages[i], b.ages[i])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))


@pytest.mark.slow
def test_cbp_two_processes_stay_identical(tmp_path) -> None:
    result = launch_findings("dist_cbp_script.py", tmp_path / "out.json")
    assert result["local_sums_differ"], "each process should see activations of its own data"
    assert result["replaced_total"] > 0
    assert result["replicas_equal"] and result["utility_equal"] and result["ages_equal"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cbp_step_without_replacement_never_syncs_with_the_host() -> None:
    """The common step (nothing to replace: n is known on the host) is device work only. A step that
    replaces units copies their fresh incoming weights from the host (drawn on the CPU, the same on any
    device)."""
    model = build(gpt2_config(n_embd=64, n_inner=256)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cbp = ContinualBackprop(replacement_rate=0.05, decay_rate=0.9, maturity_threshold=2, seed=0)
    cbp.attach(model, opt)
    batch = ids(0).cuda()

    def one_step() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()

    one_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host synchronisation now raises
    try:
        cbp.after_optimizer_step(model)  # step 1: state created on the device, no unit mature
        one_step()
        cbp.after_optimizer_step(model)  # step 2: ages 2, none above the threshold 2
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cbp.replaced_total == 0 and cbp.utility[0].device.type == "cuda"
    one_step()
    cbp.after_optimizer_step(model)  # step 3: 256 mature * 0.05 = 12.8 -> 12 replaced
    assert cbp.replaced_total == 12


# ------------------------------------------------------------------------------------- shrink and perturb
def test_shrink_perturb_equals_the_formula_with_independent_noise() -> None:
    config = gpt2_config(n_layer=2, n_embd=16, n_inner=32)
    model = build(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt, 0)
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    sp = ShrinkPerturb(shrink=0.8, perturb=0.1, seed=7)
    for k in range(2):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        metrics = sp.revive(model, report(2, 32), opt)
        noise = dict(build(config, seed=7 * STRIDE + k).named_parameters())  # the init, rebuilt here
        for n, p in model.named_parameters():
            torch.testing.assert_close(
                p.detach(), 0.8 * before[n] + 0.1 * noise[n].detach(), rtol=0, atol=1e-7
            )
        assert metrics["revival/count"] == k + 1
        norm_before = float(torch.sqrt(sum(t.pow(2).sum() for t in before.values())))
        assert metrics["revival/weight_norm_before"] == pytest.approx(norm_before, rel=1e-5)
    for p, s in opt.state.items():  # the optimizer state is kept
        assert all(torch.equal(v, moments[id(p)][k]) for k, v in s.items())


# ------------------------------------------------------------------------------------- L2 toward init
def test_l2_init_gradient_equals_autograd_of_the_loss_term() -> None:
    model = build(gpt2_config(n_embd=16, n_inner=32))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    l2 = L2Init(strength=0.05)
    step(model, opt, 0, l2)  # takes w0 at the first step, before the update
    step(model, opt, 1, l2)
    reference = copy.deepcopy(model)
    batch = ids(2)
    loss = reference(input_ids=batch, labels=batch).loss
    loss = loss + 0.05 * sum(((p - w0[n]) ** 2).sum() for n, p in reference.named_parameters())
    loss.backward()
    model(input_ids=batch, labels=batch).loss.backward()
    l2.before_optimizer_step(model)
    grads = dict(reference.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, rtol=1e-5, atol=1e-8)
    distance = float(torch.sqrt(sum(((p.detach() - w0[n]) ** 2).sum() for n, p in model.named_parameters())))
    metrics = l2.revive(model, report(1, 32), opt)
    assert distance > 0 and metrics["revival/distance_to_init"] == pytest.approx(distance, rel=1e-5)


# ------------------------------------------------------------------------------------- fresh start
def test_fresh_start_is_a_fresh_model_and_a_new_optimizer() -> None:
    config = gpt2_config(n_layer=2, n_embd=16, n_inner=32)
    model = build(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for k in range(2):
        step(model, opt, k)
    fs = FreshStart(seed=4)
    runs = []
    for k in range(2):
        fs.revive(model, report(2, 32), opt)
        expected = build(config, seed=4 * STRIDE + k)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters(), strict=True))
        assert len(opt.state) == 0
        runs.append([p.detach().clone() for p in model.parameters()])
        # one step with the cleared optimizer equals one with a new AdamW from the same fresh weights
        new_opt = torch.optim.AdamW(expected.parameters(), lr=1e-2)
        step(model, opt, 10 + k)
        step(expected, new_opt, 10 + k)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(*runs, strict=True)), "two revivals draw differently"


# ------------------------------------------------------------------------------------- config and runs
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("revival.continual_backprop.replacement_rate=2", "revival.continual_backprop.replacement_rate=2.0"),
        (
            "revival.continual_backprop.decay_rate=1",
            "revival.continual_backprop.decay_rate=1.0 must be in [0, 1)",
        ),
        (
            "revival.continual_backprop.maturity_threshold=-1",
            "revival.continual_backprop.maturity_threshold=-1",
        ),
        ("revival.shrink_perturb.shrink=1.5", "revival.shrink_perturb.shrink=1.5 must be in [0, 1]"),
        ("revival.shrink_perturb.perturb=-0.1", "revival.shrink_perturb.perturb=-0.1 must be >= 0"),
        ("revival.l2_init.strength=0", "revival.l2_init.strength=0.0 must be a number > 0"),
    ],
)
def test_bad_options_name_the_key(override, expected) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_options_reach_the_reviver() -> None:
    cfg = load_config(
        None,
        [
            "revival.method=continual_backprop",
            "revival.continual_backprop.replacement_rate=0.01",
            "revival.continual_backprop.maturity_threshold=7",
            "train.seed=3",
        ],
    )
    r = build_reviver(cfg.revival, seed=cfg.train.seed)
    assert isinstance(r, ContinualBackprop)
    assert (r.replacement_rate, r.decay_rate, r.maturity_threshold, r.seed) == (0.01, 0.99, 7, 3)
    assert {"continual_backprop", "shrink_perturb", "l2_init", "fresh_start"} <= set(REVIVERS)
    assert [REVIVERS[m].arm for m in ("continual_backprop", "shrink_perturb", "l2_init", "fresh_start")] == [
        "continual_backprop",
        "shrink_perturb",
        "l2_init",
        "fresh_start",
    ]


RECIPE = REPO / "recipes" / "quickstart.yaml"
RUNS = {
    "continual_backprop": {
        "revival.continual_backprop.maturity_threshold": 2,
        "revival.continual_backprop.replacement_rate": 0.02,
    },
    "shrink_perturb": {"revival.shrink_perturb.perturb": 0.1},
    "l2_init": {"revival.l2_init.strength": 0.01},
    "fresh_start": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RUNS))
def test_training_resumes_bit_identical(method, tmp_path, corpus_file) -> None:
    """A tiny run with the method, revival every 5 steps (at 5 and 10 of 12); the same run resumed from its
    step-8 checkpoint ends with the same weights."""
    from reviveformer.trainer import Trainer, train

    extra = {
        "data.max_tokens": 32 * 8 * 12,
        "train.epochs": 1,
        "train.checkpoint_every": 4,
        "train.checkpoint_limit": 10,
        "train.deterministic": True,
        "model.activation": "relu",
        "revival.method": method,
        "revival.every_steps": 5,
        "train.lr": 1e-2,
        **RUNS[method],
    }
    straight = tmp_path / "straight"
    trainer = Trainer(load_config(RECIPE, tiny_overrides(straight, corpus_file, **extra)))
    summary = trainer.run()
    assert summary.steps == 12
    if method == "continual_backprop":
        assert trainer.reviver._hooks == []  # the run's end removed the hooks it attached
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    revivals = [r for r in rows if "revival/count" in r]
    assert [(r["step"], r["revival/count"]) for r in revivals] == [(5, 1.0), (10, 2.0)]
    if method == "continual_backprop":
        assert revivals[0]["revival/replaced_total"] > 0
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_00000008", resumed / "checkpoints" / "step_00000008")
    train(load_config(RECIPE, tiny_overrides(resumed, corpus_file, **extra, **{"train.resume": "auto"})))
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
