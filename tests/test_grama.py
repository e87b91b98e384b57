"""GraMa (Liu et al. 2025): scores against a hand computation, what a reset touches, optimizer state, state
round trips through a real checkpoint file, identical decisions on 2 processes, and a tiny training run."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from revival_reports import NO_REPORT, report_with_dead
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import REPO, launch_findings, tiny_overrides
from reviveformer.checkpoint import read_state, write_state
from reviveformer.config import load_config
from reviveformer.revival import REVIVERS, GraMa, arm_of_method, build_reviver
from reviveformer.revival.grama import step_scores

N_EMBD, N_INNER = 16, 64
SILENT = {0: [3, 10, 20], 1: [5]}  # units that cannot fire (ReLU of a very negative input): no gradient


def relu_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=N_EMBD,
            n_head=2,
            n_positions=16,
            vocab_size=64,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.2,
        )
    )
    with torch.no_grad():
        for i, units in SILENT.items():
            model.transformer.h[i].mlp.c_fc.bias[units] = -100.0
    return model


def batch(k: int) -> torch.Tensor:
    return (torch.arange(48).reshape(4, 12) * (k + 1) + k) % 64


def backward(model: GPT2LMHeadModel, k: int) -> None:
    model.zero_grad()
    ids = batch(k)
    model(input_ids=ids, labels=ids).loss.backward()


def hand_scores(grad: torch.Tensor) -> list[float]:
    """The GraMa score of one step, written out with Python numbers: per column, the mean |g| of the column
    over the mean of those means (Liu et al. 2025)."""
    cols = grad.double().t().tolist()
    per_unit = [sum(abs(x) for x in col) / len(col) for col in cols]
    layer = sum(per_unit) / len(per_unit)
    return [u / layer for u in per_unit]


def test_step_scores_by_hand() -> None:
    g = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.0]])  # column means |g|: 2, 1, 0; layer mean 1
    assert step_scores(g).tolist() == [2.0, 1.0, 0.0]
    assert step_scores(torch.zeros(4, 3)).tolist() == [0.0, 0.0, 0.0]  # a silent layer: 0, not NaN


def test_window_scores_equal_a_hand_computation() -> None:
    model, grama = relu_gpt2(), GraMa(tau=0.1)
    expected = {0: [0.0] * N_INNER, 1: [0.0] * N_INNER}
    for k in range(3):
        backward(model, k)
        for i in (0, 1):
            for j, s in enumerate(hand_scores(model.transformer.h[i].mlp.c_fc.weight.grad)):
                expected[i][j] += s / 3
        grama.before_optimizer_step(model)
    got = grama.window_scores(model)
    for i in (0, 1):
        assert got[i].tolist() == pytest.approx(expected[i], rel=1e-5, abs=1e-7)
        assert all(expected[i][j] == 0 for j in SILENT[i])  # no gradient reaches a silent unit
    assert grama.steps == 3


def train_steps(model: GPT2LMHeadModel, opt: torch.optim.Optimizer, grama: GraMa, ks: range) -> None:
    for k in ks:
        backward(model, k)
        grama.before_optimizer_step(model)
        opt.step()


def test_reset_touches_exactly_the_dormant_units_and_their_optimizer_state() -> None:
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grama = GraMa(tau=0.3, seed=1)
    train_steps(model, opt, grama, range(2))
    scores = {i: s.tolist() for i, s in grama.window_scores(model).items()}
    dormant = {i: [j for j, s in enumerate(scores[i]) if s <= 0.3] for i in (0, 1)}
    for i in (0, 1):
        assert set(SILENT[i]) <= set(dormant[i]) and len(dormant[i]) < N_INNER
    assert len(dormant[1]) > len(SILENT[1]), "tau should also catch some units that do get a little gradient"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}

    metrics = grama.revive(model, report_with_dead({0: [3]}), opt)

    assert metrics["revival/dormant_units"] == len(dormant[0]) + len(dormant[1])
    assert metrics["revival/layer_1/dormant_units"] == len(dormant[1])
    assert metrics["revival/dead_units"] == 1 and metrics["revival/grama_steps"] == 2
    assert grama.last_scores == scores
    for i in (0, 1):
        mlp, prefix = model.transformer.h[i].mlp, f"transformer.h.{i}.mlp."
        cols = torch.zeros(N_INNER, dtype=torch.bool)
        cols[dormant[i]] = True
        w_old = before[prefix + "c_fc.weight"]
        assert (mlp.c_fc.weight[:, cols] != w_old[:, cols]).all()
        assert torch.equal(mlp.c_fc.weight[:, ~cols], w_old[:, ~cols])
        assert (mlp.c_fc.bias[cols] == 0).all()
        assert torch.equal(mlp.c_fc.bias[~cols], before[prefix + "c_fc.bias"][~cols])
        assert (mlp.c_proj.weight[cols] == 0).all()
        assert torch.equal(mlp.c_proj.weight[~cols], before[prefix + "c_proj.weight"][~cols])
        for p, sel in (
            (mlp.c_fc.weight, (slice(None), cols)),
            (mlp.c_fc.bias, cols),
            (mlp.c_proj.weight, cols),
        ):
            for key in ("exp_avg", "exp_avg_sq"):
                new, old = opt.state[p][key], state_before[p][key]
                reset = torch.zeros_like(p, dtype=torch.bool)
                reset[sel] = True
                assert (new[reset] == 0).all()
                # layer 0's dormant units are silent (state already 0); layer 1's got a little gradient
                assert i == 0 or (old[reset] != 0).any()
                assert torch.equal(new[~reset], old[~reset])
    for name, p in model.named_parameters():
        if ".mlp.c_" not in name:
            assert torch.equal(p, before[name]), name
    # a new window starts after each revival
    assert grama.steps == 0 and all(
        s.tolist() == [0.0] * N_INNER for s in grama.window_scores(model).values()
    )


def test_no_step_no_reset() -> None:
    model = relu_gpt2()
    before = copy.deepcopy(model.state_dict())
    metrics = GraMa(tau=10.0).revive(model, NO_REPORT, None)
    assert metrics["revival/dormant_units"] == 0 and metrics["revival/grama_steps"] == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_checkpoint_round_trip_continues_identically(tmp_path) -> None:
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    a = GraMa(tau=0.3, seed=5)
    train_steps(model, opt, a, range(2))
    a.revive(model, NO_REPORT, opt)
    train_steps(model, opt, a, range(2, 4))  # mid-window: the sums are part of the state
    write_state(tmp_path, {"reviver": a.state_dict()})
    b = GraMa(tau=0.3, seed=0)
    b.load_state_dict(read_state(tmp_path)["reviver"])
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # shares no state tensor with opt
    train_steps(model, opt, a, range(4, 6))
    train_steps(twin, twin_opt, b, range(4, 6))
    assert a.revive(model, NO_REPORT, opt) == b.revive(twin, NO_REPORT, twin_opt)
    assert a.last_scores == b.last_scores and a.state_dict()["prev_dormant"] == b.state_dict()["prev_dormant"]
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_registry_names_the_arm() -> None:
    assert REVIVERS["grama"] is GraMa
    assert [arm_of_method(m) for m in ("none", "synaptic_stripping", "redo", "grama")] == [
        "baseline",
        "stripping",
        "redo",
        "grama",
    ]
    r = build_reviver(load_config(None, ["revival.method=grama", "revival.grama.tau=0.05"]).revival, seed=3)
    assert isinstance(r, GraMa) and (r.tau, r.seed) == (0.05, 3)


@pytest.mark.slow
def test_two_processes_decide_identically(tmp_path):
    result = launch_findings("dist_grama_script.py", tmp_path / "out.json")
    assert result["reset"] > 0
    assert result["local_grads_differ"], "the processes' own gradients should differ before DDP averages them"
    assert result["decisions_equal"] and result["replicas_equal"]
    assert result["scores_match_averaged_gradient"]


RECIPE = REPO / "recipes" / "quickstart.yaml"


@pytest.mark.slow
def test_training_with_grama_end_to_end_and_resume(tmp_path, corpus_file):
    """revival.method=grama in a tiny run: resets logged, job_type from the registry; a run resumed from a
    checkpoint in the middle of a scoring window ends bit-identical to a straight one."""
    from reviveformer.trainer import train

    extra = {
        "data.max_tokens": 32 * 8 * 12,
        "train.epochs": 1,
        "train.checkpoint_every": 4,
        "train.checkpoint_limit": 10,
        "train.deterministic": True,
        "model.activation": "relu",
        "revival.method": "grama",
        "revival.every_steps": 6,
        "revival.tau": 0.5,
        "train.lr": 1e-2,
    }
    straight = tmp_path / "straight"
    summary = train(load_config(RECIPE, tiny_overrides(straight, corpus_file, **extra)))
    assert summary.steps == 12
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    revivals = [r for r in rows if "revival/grama_steps" in r]
    # every 6 steps (revival.every_steps replaces the epoch-end revival), each scoring the 6 steps before it
    assert [(r["step"], r["revival/grama_steps"]) for r in revivals] == [(6, 6.0), (12, 6.0)]
    assert revivals[0]["revival/dormant_units"] > 0
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    # killed after step 8: the window of steps 7..8 is in the checkpoint
    shutil.copytree(straight / "checkpoints" / "step_00000008", resumed / "checkpoints" / "step_00000008")
    train(load_config(RECIPE, tiny_overrides(resumed, corpus_file, **extra, **{"train.resume": "auto"})))
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scoring_a_step_never_syncs_with_the_host():
    model = relu_gpt2().cuda()
    grama = GraMa()
    ids = batch(0).cuda()
    model(input_ids=ids, labels=ids).loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host synchronisation now raises
    try:
        for _ in range(3):
            grama.before_optimizer_step(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert grama.window_scores(model)[0].device.type == "cuda"
