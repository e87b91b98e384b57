"""Revival: the synaptic-stripping rule by hand, optimizer-state resets, persistence, ReDo, state round trips."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import replace

import pytest
import torch
from accelerate.utils import DistributedType
from revival_reports import report_with_dead
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer.activations import set_activation
from reviveformer.config import RevivalConfig, load_config
from reviveformer.errors import ConfigError
from reviveformer.liveness import LivenessReport
from reviveformer.revival import (
    ReDo,
    SynapticStripping,
    build_reviver,
    check_supported,
    reset_adam_state,
    strip_layer,
)
from reviveformer.revival.grama import GraMa, GraMaOptions

N_EMBD, N_INNER = 16, 64


def tiny_gpt2(seed: int = 0, activation: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=N_EMBD,
        n_head=2,
        n_positions=16,
        vocab_size=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(cfg)
    set_activation(model, activation)
    return model


IDS = torch.arange(48).reshape(4, 12) % 64


def logits(model: GPT2LMHeadModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def train_step(model: GPT2LMHeadModel, opt: torch.optim.Optimizer, push_cfc: bool = False) -> None:
    """One AdamW step; with push_cfc the loss also pulls every c_fc weight upwards (gradient -1 on each)."""
    opt.zero_grad()
    loss = model(input_ids=IDS, labels=IDS).loss
    if push_cfc:
        loss = loss - sum(b.mlp.c_fc.weight.sum() for b in model.transformer.h)
    loss.backward()
    opt.step()


def report(dead: dict[int, list[int]], dormancy: dict[int, list[float]] | None = None) -> LivenessReport:
    """A typed liveness report over 48 tokens with these dead units (and ReDo scores; 1.0 where not given)."""
    return report_with_dead(dead, N_INNER, dormancy)


class WrappedOptimizer:
    """Stands in for accelerate's AcceleratedOptimizer, which exposes the torch optimizer as `.optimizer`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer


# --- the stripping rule, by hand (Whitaker & Whitley 2023) --------------------------------------------------

# Columns are units (Conv1D weight is (in, out)). Column 2 is already partly pruned: n = 3 nonzero entries.
W = torch.tensor(
    [
        [-0.5, 0.3, -0.1, 0.2],
        [0.4, -0.2, 0.0, -0.6],
        [-0.9, 0.1, 0.0, 0.5],
        [0.2, -0.7, -0.3, 0.1],
        [-0.3, 0.6, -0.4, -0.8],
    ]
)
B = torch.tensor([-0.1, -0.2, 0.3, -0.4])


def zeroed(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in mask.nonzero().tolist()}


@pytest.mark.parametrize(
    ("fraction", "dead", "expected"),
    [
        # col 0: n=5, k=ceil(0.2*5)=1 -> row 2 (-0.9); col 2: n=3, k=ceil(0.6)=1 -> row 4 (-0.4)
        (0.2, [0, 2], {(2, 0), (4, 2)}),
        # col 0: k=2 -> rows 2, 0; col 2: k=ceil(1.2)=2 -> rows 4, 3
        (0.4, [0, 2], {(2, 0), (0, 0), (4, 2), (3, 2)}),
        # col 0: k=ceil(2.5)=3 -> its three negatives; col 2: k=ceil(1.5)=2 (n counts nonzero only; n=5 would give 3)
        (0.5, [0, 2], {(2, 0), (0, 0), (4, 0), (4, 2), (3, 2)}),
        # col 0: k=4 but only three negatives -> all three; col 1: k=4, two negatives -> rows 3, 1
        (0.8, [0, 1], {(2, 0), (0, 0), (4, 0), (3, 1), (1, 1)}),
        # ceil: col 2 with n=3: 0.33*3=0.99 -> 1, 0.34*3=1.02 -> 2
        (0.33, [2], {(4, 2)}),
        (0.34, [2], {(4, 2), (3, 2)}),
        (1.0, [3], {(1, 3), (4, 3)}),
        (0.2, [], set()),
    ],
)
def test_strip_layer_by_hand(fraction: float, dead: list[int], expected: set[tuple[int, int]]) -> None:
    w, b = W.clone(), B.clone()
    w_mask, b_mask = strip_layer(w, b, dead, fraction, strip_bias=False)
    assert zeroed(w_mask) == expected
    assert b_mask is not None and not b_mask.any()
    assert torch.equal(w, W) and torch.equal(b, B)  # pure: inputs untouched


def test_strip_bias_on_and_off() -> None:
    # Dead units 0 (bias -0.1) and 2 (bias 0.3): only the negative one is zeroed; alive unit 1 (-0.2) is not.
    _, b_mask = strip_layer(W, B, [0, 2], 0.2, strip_bias=True)
    assert b_mask is not None and b_mask.tolist() == [True, False, False, False]
    _, b_mask = strip_layer(W, B, [0, 2], 0.2, strip_bias=False)
    assert b_mask is not None and not b_mask.any()


def test_strip_ceil_survives_float_error() -> None:
    # 0.28 * 25 is 7.000000000000001 in floating point; the rule means k = 7, not 8.
    assert 0.28 * 25 > 7
    w = -torch.arange(1.0, 26.0).unsqueeze(1)  # one unit, 25 negative weights -1 .. -25
    w_mask, _ = strip_layer(w, None, [0], 0.28)
    assert zeroed(w_mask) == {(r, 0) for r in range(18, 25)}  # the seven most negative: -19 .. -25


def test_strip_ties_break_by_lower_row() -> None:
    w = torch.tensor([[0.1], [-0.5], [-0.5], [0.2]])
    w_mask, _ = strip_layer(w, None, [0], 0.25)  # n = 4, k = 1, two equally negative candidates
    assert zeroed(w_mask) == {(1, 0)}


def test_weight_layout_pin() -> None:
    """c_fc.weight[:, j] is unit j's incoming weights: zeroed, its pre-activation is its bias on every token."""
    model = tiny_gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc
    j = 5
    with torch.no_grad():
        c_fc.weight[:, j] = 0
    seen: dict[str, torch.Tensor] = {}
    hook = c_fc.register_forward_hook(lambda m, inp, out: seen.update(pre=out))
    logits(model)
    hook.remove()
    pre = seen["pre"]
    assert pre.shape[-1] == N_INNER
    assert torch.equal(pre[..., j], c_fc.bias[j].expand_as(pre[..., j]))
    assert not torch.equal(pre[..., j + 1], c_fc.bias[j + 1].expand_as(pre[..., j + 1]))


# --- stripping a model --------------------------------------------------------------------------------------


def hand_strip_mask(column: torch.Tensor, k: int) -> set[int]:
    """Rows of the k most negative entries of one column, by plain Python sorting."""
    negatives = sorted((v, r) for r, v in enumerate(column.tolist()) if v < 0)
    return {r for _, r in negatives[:k]}


DEAD = {0: [1, 5, 9], 1: [0, 2]}


def test_strip_model_resets_adam_state_exactly() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, opt)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}

    reviver = SynapticStripping(fraction=0.25, persistent=True)
    metrics = reviver.revive(model, report(DEAD), WrappedOptimizer(opt))

    stripped = 0
    for i, dead in DEAD.items():
        w = model.transformer.h[i].mlp.c_fc.weight
        w_old = params_before[f"transformer.h.{i}.mlp.c_fc.weight"]
        expected = torch.zeros_like(w, dtype=torch.bool)
        for j in dead:  # n = 16 nonzero weights, k = ceil(0.25 * 16) = 4
            for r in hand_strip_mask(w_old[:, j], 4):
                expected[r, j] = True
        assert expected.sum() == 4 * len(dead)
        stripped += int(expected.sum())
        assert torch.equal(w[expected], torch.zeros(int(expected.sum())))
        assert torch.equal(
            w[~expected], w_old[~expected]
        )  # everything else, alive units included, bit-identical
        assert torch.equal(reviver.pruned_masks()[i], expected)
        for key in ("exp_avg", "exp_avg_sq"):
            new, old = opt.state[w][key], state_before[w][key]
            assert (old[expected] != 0).all()  # there was state to reset
            assert torch.equal(new[expected], torch.zeros(int(expected.sum())))
            assert torch.equal(new[~expected], old[~expected])
    for name, p in model.named_parameters():  # nothing but c_fc weights changed, nor their optimizer state
        if not name.endswith("mlp.c_fc.weight"):
            assert torch.equal(p, params_before[name]), name
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[p][key], state_before[p][key]), name

    assert metrics["revival/dead_units"] == 5
    assert metrics["revival/stripped_now"] == stripped == 20
    assert metrics["revival/pruned_total"] == 20
    assert metrics["revival/revived_units"] == 0
    assert metrics["revival/layer_0/dead_units"] == 3 and metrics["revival/layer_1/stripped_now"] == 8
    details = reviver.last_layer_details()
    assert [(d["layer"], d["dead_units"], d["stripped_now"]) for d in details] == [(0, 3, 12), (1, 2, 8)]


def test_strip_before_first_step_and_without_optimizer() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters())
    metrics = SynapticStripping(fraction=0.25).revive(model, report(DEAD), opt)  # empty optimizer state
    assert metrics["revival/stripped_now"] == 20
    assert (
        SynapticStripping(fraction=0.25).revive(tiny_gpt2(), report(DEAD), None)["revival/stripped_now"] == 20
    )


def test_strip_bias_in_model() -> None:
    model = tiny_gpt2()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias[:] = torch.linspace(-1, 1, N_INNER)  # units < 32 negative
    bias_before = model.transformer.h[0].mlp.c_fc.bias.detach().clone()
    SynapticStripping(fraction=0.25, strip_bias=True).revive(model, report({0: [1, 40]}), None)
    bias = model.transformer.h[0].mlp.c_fc.bias
    assert bias[1] == 0 and bias[40] == bias_before[40]
    keep = torch.ones(N_INNER, dtype=torch.bool)
    keep[1] = False
    assert torch.equal(bias[keep], bias_before[keep])


@pytest.mark.parametrize("persistent", [True, False])
def test_persistence(persistent: bool) -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    train_step(model, opt)
    reviver = SynapticStripping(fraction=0.25, persistent=persistent)
    reviver.revive(model, report(DEAD), opt)
    w = model.transformer.h[0].mlp.c_fc.weight
    stripped = w.detach() == 0
    assert stripped.sum() == 12
    for _ in range(3):
        train_step(model, opt, push_cfc=True)
        assert (w.grad[stripped] != 0).all()  # the gradient does try to move them
        reviver.after_optimizer_step(model)
    if persistent:
        assert torch.equal(w[stripped], torch.zeros(12))
        assert (w[~stripped] != 0).all()
    else:
        assert (w[stripped] != 0).all()
        assert reviver.pruned_masks() is None


def test_state_round_trip_continues_identically() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, opt)
    a = SynapticStripping(fraction=0.25, strip_bias=True)
    a.revive(model, report(DEAD), opt)

    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = SynapticStripping(fraction=0.25, strip_bias=True)
    b.load_state_dict(torch.load(buf, weights_only=True))  # checkpoint-safe: tensors and plain types only
    assert b.pruned_masks().keys() == a.pruned_masks().keys()
    for i in a.pruned_masks():
        assert torch.equal(a.pruned_masks()[i], b.pruned_masks()[i])

    model_b = copy.deepcopy(model)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the tensors
    for m, o, r in ((model, opt, a), (model_b, opt_b, b)):
        for _ in range(2):
            train_step(m, o, push_cfc=True)
            r.after_optimizer_step(m)
    for (name, p), q in zip(model.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q), name

    # Second revival: layer 0 dead [1, 5, 9] before, [5, 7] now -> units 1 and 9 revived.
    second = {0: [5, 7], 1: [0, 2, 3]}
    ma, mb = a.revive(model, report(second), opt), b.revive(model_b, report(second), opt_b)
    assert ma == mb
    assert ma["revival/layer_0/revived_units"] == 2 and ma["revival/layer_1/revived_units"] == 0
    assert ma["revival/revived_units"] == 2 and ma["revival/count"] == 2


def test_missing_site_is_config_error() -> None:
    with pytest.raises(ConfigError, match="mlp_post"):
        SynapticStripping().revive(tiny_gpt2(), replace(report({}), sites={"mlp_pre": []}), None)


# --- ReDo (Sokar et al. 2023) ------------------------------------------------------------------------------

DEAD_UNITS, ACTIVE_DORMANT = [3, 7], 10


def redo_setup() -> tuple[GPT2LMHeadModel, torch.optim.Optimizer, dict]:
    model = tiny_gpt2(activation="relu")
    model.config.initializer_range = 0.02
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, opt)
    with torch.no_grad():  # units 3 and 7 of layer 0 can never fire (relu of a very negative input is 0)
        model.transformer.h[0].mlp.c_fc.bias[DEAD_UNITS] = -100.0
    scores = {i: [1.0] * N_INNER for i in (0, 1)}
    for j in DEAD_UNITS:
        scores[0][j] = 0.0
    scores[0][ACTIVE_DORMANT] = 0.05  # dormant (<= tau = 0.1) but still contributing a little
    return model, opt, report({0: DEAD_UNITS, 1: []}, scores)


def test_redo_reinitialises_only_dormant_units() -> None:
    model, opt, rep = redo_setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    dormant = DEAD_UNITS + [ACTIVE_DORMANT]
    reference = copy.deepcopy(model)  # the model with the dormant units' outgoing weights zeroed, by hand
    with torch.no_grad():
        reference.transformer.h[0].mlp.c_proj.weight[dormant, :] = 0

    metrics = ReDo(tau=0.1, seed=0).revive(model, rep, WrappedOptimizer(opt))
    assert metrics["revival/dormant_units"] == 3 and metrics["revival/layer_1/dormant_units"] == 0
    assert metrics["revival/dead_units"] == 2

    # Zeroed outgoing weights multiply the new activations by exactly 0, and the matmuls add the same terms
    # in the same order as the hand-edited reference, so the logits are bit-identical.
    assert torch.equal(logits(model), logits(reference))

    mlp = model.transformer.h[0].mlp
    cols = torch.zeros(N_INNER, dtype=torch.bool)
    cols[dormant] = True
    w_old = before["transformer.h.0.mlp.c_fc.weight"]
    assert (mlp.c_fc.weight[:, cols] != w_old[:, cols]).all()
    assert torch.equal(mlp.c_fc.weight[:, ~cols], w_old[:, ~cols])
    fresh = mlp.c_fc.weight[:, cols]
    assert 0.01 < fresh.std().item() < 0.03 and abs(fresh.mean().item()) < 0.01  # normal(0, 0.02)
    assert torch.equal(mlp.c_fc.bias[cols], torch.zeros(3))
    assert torch.equal(mlp.c_fc.bias[~cols], before["transformer.h.0.mlp.c_fc.bias"][~cols])
    assert torch.equal(mlp.c_proj.weight[cols], torch.zeros(3, N_EMBD))
    assert torch.equal(mlp.c_proj.weight[~cols], before["transformer.h.0.mlp.c_proj.weight"][~cols])
    for name, p in model.named_parameters():
        if not name.startswith("transformer.h.0.mlp.c_"):
            assert torch.equal(p, before[name]), name

    for p, sel in ((mlp.c_fc.weight, (slice(None), cols)), (mlp.c_fc.bias, cols), (mlp.c_proj.weight, cols)):
        for key in ("exp_avg", "exp_avg_sq"):
            new, old = opt.state[p][key], state_before[p][key]
            keep = torch.ones_like(p, dtype=torch.bool)
            keep[sel] = False
            assert (new[~keep] == 0).all() and (old[~keep] != 0).any()
            assert torch.equal(new[keep], old[keep])


def test_redo_on_dead_units_leaves_output_unchanged() -> None:
    model, opt, rep = redo_setup()
    rep.sites["mlp_post"][0].dormancy[ACTIVE_DORMANT] = 1.0  # only the truly silent units are dormant
    original = logits(model)
    ReDo(tau=0.1).revive(model, rep, opt)
    assert torch.equal(logits(model), original)
    assert not torch.equal(
        model.transformer.h[0].mlp.c_fc.bias[DEAD_UNITS], torch.tensor([-100.0, -100.0])
    )  # they were re-initialised


def test_redo_deterministic_and_round_trip() -> None:
    model, opt, rep = redo_setup()
    twin, other = copy.deepcopy(model), copy.deepcopy(model)
    a = ReDo(seed=3)
    a.revive(model, rep, None)
    ReDo(seed=3).revive(twin, rep, None)
    ReDo(seed=4).revive(other, rep, None)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert torch.equal(w, twin.transformer.h[0].mlp.c_fc.weight)
    assert not torch.equal(w, other.transformer.h[0].mlp.c_fc.weight)
    assert a.pruned_masks() is None

    b = ReDo(seed=99)
    b.load_state_dict(a.state_dict())
    rep2 = copy.deepcopy(rep)
    rep2.sites["mlp_post"][0].dormancy[3] = 0.5  # unit 3 came back
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    assert a.revive(m1, rep2, None) == b.revive(m2, rep2, None)
    assert torch.equal(m1.transformer.h[0].mlp.c_fc.weight, m2.transformer.h[0].mlp.c_fc.weight)
    assert a.last_layer_details()[0]["revived_units"] == 1


# --- wiring --------------------------------------------------------------------------------------------------


def test_reset_adam_state_handles_empty_state() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p])
    reset_adam_state(opt, p, torch.tensor([True, False, True]))  # no state before the first step: no error
    assert len(opt.state) == 0


def test_build_reviver() -> None:
    assert build_reviver(load_config(None, []).revival) is None
    s = build_reviver(
        load_config(
            None,
            [
                "revival.method=synaptic_stripping",
                "revival.synaptic_stripping.fraction=0.1",
                "revival.synaptic_stripping.persistent=false",
                "revival.synaptic_stripping.strip_bias=true",
            ],
        ).revival
    )
    assert isinstance(s, SynapticStripping) and (s.fraction, s.persistent, s.strip_bias) == (0.1, False, True)
    r = build_reviver(load_config(None, ["revival.method=redo", "revival.redo.tau=0.2"]).revival, seed=7)
    assert isinstance(r, ReDo) and (r.tau, r.seed) == (0.2, 7)
    # a config built in code without the method's section gets the section's defaults
    g = build_reviver(RevivalConfig(method="grama"), seed=1)
    assert isinstance(g, GraMa) and g.tau == GraMaOptions().tau


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "DistributedType.FSDP", DistributedType.DEEPSPEED])
def test_check_supported_refuses_sharded(kind: object) -> None:
    with pytest.raises(ConfigError, match="shards the parameters"):
        check_supported(kind)


@pytest.mark.parametrize("kind", ["NO", "DistributedType.MULTI_CPU", DistributedType.MULTI_GPU])
def test_check_supported_allows_replicated(kind: object) -> None:
    check_supported(kind)


def test_fraction_float_product_is_what_the_test_assumes() -> None:
    # Pins the hand values above: these products are exact enough that ceil gives the stated k.
    assert [math.ceil(f * n) for f, n in ((0.2, 5), (0.4, 3), (0.5, 3), (0.33, 3), (0.34, 3))] == [
        1,
        2,
        2,
        1,
        2,
    ]
