"""The contract every revival method keeps (docs/design.md, Revival), checked for each registered method and for
a user's own (tests/custom_reviver.py): the metrics it declares, state round trip through a checkpoint, no
optimizer, an empty report, determinism, and that two processes decide the same."""

from __future__ import annotations

import copy

import pytest
import torch
from custom_reviver import BiasKick  # tests/ is on the path under pytest, as a user's module would be
from revival_reports import report_with_dead
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import launch_findings
from reviveformer.checkpoint import read_state, write_state
from reviveformer.revival import REVIVERS, Reviver

METHODS = [*REVIVERS.values(), BiasKick]
N_INNER = 64
SILENT = {0: [3, 10, 20], 1: [5]}  # ReLU units held far below zero: dead, dormant, and without gradient


def relu_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=16,
            n_head=2,
            n_positions=16,
            vocab_size=64,
            n_inner=N_INNER,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    with torch.no_grad():
        for i, units in SILENT.items():
            model.transformer.h[i].mlp.c_fc.bias[units] = -100.0
    return model


def make(cls: type[Reviver], seed: int = 3) -> Reviver:
    return cls.from_config(cls.Options() if cls.Options is not None else None, seed=seed)


def train_steps(model, opt, reviver: Reviver, ks: range) -> None:
    for k in ks:
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(k))
        model(input_ids=ids, labels=ids).loss.backward()
        reviver.before_optimizer_step(model)
        opt.step()
        opt.zero_grad()
        reviver.after_optimizer_step(model)


def silent_report(tokens: int = 48):
    scores = {i: [0.0 if j in SILENT[i] else 1.0 for j in range(N_INNER)] for i in SILENT}
    return report_with_dead(SILENT, N_INNER, scores, tokens=tokens)


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(params=METHODS, ids=lambda cls: cls.name)
def method(request) -> type[Reviver]:
    return request.param


def test_declares_what_the_rest_of_the_package_reads(method) -> None:
    assert method.name.isidentifier() and method.arm and method.name not in ("method", "every_steps")
    if method in REVIVERS.values():
        assert REVIVERS[method.name] is method
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reviver = make(method)
    train_steps(model, opt, reviver, range(2))
    before = params(model)
    metrics = reviver.revive(model, silent_report(), opt)
    assert sorted(metrics) == sorted(method.metric_keys([0, 1]))
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["revival/count"] == 1.0
    assert method.acts in ("report", "always", "step")
    if method.acts == "step":  # it acts in its per-step hooks: revive only reports
        assert same(params(model), before)
    else:
        assert not same(params(model), before), "the silent units should make every method edit the model"
    assert [d["layer"] for d in reviver.last_layer_details()] == [0, 1]


def test_state_round_trip_through_a_checkpoint(method, tmp_path) -> None:
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    a = make(method)
    train_steps(model, opt, a, range(2))
    a.revive(model, silent_report(), opt)
    train_steps(model, opt, a, range(2, 4))  # mid-window: whatever the method accumulates is state too
    write_state(tmp_path, {"reviver": a.state_dict()})
    b = make(method, seed=0)  # another seed: the state must carry whatever the method draws from
    b.load_state_dict(read_state(tmp_path)["reviver"])
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train_steps(model, opt, a, range(4, 6))
    train_steps(twin, twin_opt, b, range(4, 6))
    assert a.revive(model, silent_report(), opt) == b.revive(twin, silent_report(), twin_opt)
    assert same(params(model), params(twin))
    assert a.last_layer_details() == b.last_layer_details()


def test_revives_without_an_optimizer(method) -> None:
    """A saved model has no optimizer (strip): the edit of the weights is the same as with one."""
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with_opt, without = make(method), make(method)
    twin = copy.deepcopy(model)
    train_steps(model, opt, with_opt, range(2))
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    train_steps(twin, twin_opt, without, range(2))
    m1 = with_opt.revive(model, silent_report(), opt)
    m2 = without.revive(twin, silent_report(), None)
    assert m1 == m2 and same(params(model), params(twin))


@pytest.mark.parametrize("case", ["no_tokens", "no_dead_units"])
def test_empty_report_changes_nothing(method, case) -> None:
    """A measurement that saw no tokens, or found every unit alive and active, edits nothing (a fresh reviver:
    GraMa has no gradient window yet). A method that acts whatever the report (`acts == "always"`) makes the
    same edit as from the silent report instead."""
    model = relu_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(9))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()  # optimizer state exists, so a reset would show
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    before = params(model)
    rep = silent_report(tokens=0) if case == "no_tokens" else report_with_dead({0: [], 1: []}, N_INNER)
    twin = copy.deepcopy(model)
    metrics = make(method).revive(model, rep, opt)
    if method.acts == "always":
        make(method).revive(twin, silent_report(), None)
        assert same(params(model), params(twin)) and not same(params(model), before)
        return
    assert same(params(model), before)
    for p, s in opt.state.items():
        assert all(torch.equal(v, state_before[id(p)][k]) for k, v in s.items())
    assert metrics["revival/count"] == 1.0


def test_deterministic(method) -> None:
    """Same model, optimizer, inputs and seed: the same edits and the same metrics."""
    runs = []
    for _ in range(2):
        model = relu_gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        reviver = make(method)
        train_steps(model, opt, reviver, range(2))
        metrics = reviver.revive(model, silent_report(), opt)
        train_steps(model, opt, reviver, range(2, 3))
        metrics2 = reviver.revive(model, silent_report(), opt)
        moments = {f"{i}.{k}": v.clone() for i, s in opt.state_dict()["state"].items() for k, v in s.items()}
        runs.append((metrics, metrics2, params(model), moments))
    (a1, a2, pa, sa), (b1, b2, pb, sb) = runs
    assert a1 == b1 and a2 == b2 and same(pa, pb) and same(sa, sb)


@pytest.mark.slow
def test_two_processes_decide_the_same(tmp_path) -> None:
    """Every method under 2 processes (DDP, each its own data): the replicas are identical after revival,
    although the processes' own liveness counts differ."""
    result = launch_findings("dist_revival_contract_script.py", tmp_path / "out.json")
    assert sorted(result) == sorted(cls.name for cls in METHODS)
    for name, r in result.items():
        assert r["local_dead_differ"], f"{name}: the processes' own dead sets should differ"
        # a method that acts every step leaves the model alone at revive
        assert r["edited"] == (REVIVERS.get(name, BiasKick).acts != "step"), name
        assert r["replicas_equal"], name
