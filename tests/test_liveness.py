"""The liveness monitor against independent computations: site tensors captured with plain hooks on modules
the monitor leaves alone, counted with numpy; definitions at their boundaries; windows, state, compile, bf16,
capacity by hand, and 1 vs 2 processes under `accelerate launch`."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from conftest import launch_findings
from reviveformer import liveness
from reviveformer.config import SITES, LivenessConfig
from reviveformer.errors import CheckpointError
from reviveformer.liveness import HISTOGRAM_RANGE, LivenessMonitor, LivenessReport, capacity, layer_liveness

REPO = Path(__file__).resolve().parents[1]
VOCAB, N_EMBD, N_INNER, N_LAYER, T = 97, 64, 256, 2, 16
KILLED = {0: [3, 17, 200], 1: [5]}  # relu units made dead by a large negative bias
UNITS = {"mlp_pre": N_INNER, "mlp_post": N_INNER, "attn_out": N_EMBD}


def tiny_model(activation: str = "relu", seed: int = 0, kill: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=N_LAYER,
        n_embd=N_EMBD,
        n_head=2,
        n_positions=32,
        vocab_size=VOCAB,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    if kill:
        with torch.no_grad():
            for i, units in KILLED.items():
                model.transformer.h[i].mlp.c_fc.bias[units] = -100.0
    return model


def batch(seed: int, b: int = 6, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (b, T) and a right-padding mask with random lengths in [1, T] (None when not padded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, T), generator=g)
    if not padded:
        return ids, None
    lengths = torch.randint(1, T + 1, (b,), generator=g)
    return ids, (torch.arange(T)[None, :] < lengths[:, None]).long()


class Capture:
    """Site tensors of every forward, captured by plain hooks on c_fc (its output is mlp_pre), on the MLP's
    c_proj (its input is mlp_post) and on the attention module (its first output is attn_out in eval mode)."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        self.acts: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.handles = []
        for i, block in enumerate(model.transformer.h):
            self.handles += [
                block.mlp.c_fc.register_forward_hook(lambda m, a, out, i=i: self._save("mlp_pre", i, out)),
                block.mlp.c_proj.register_forward_pre_hook(lambda m, a, i=i: self._save("mlp_post", i, a[0])),
                block.attn.register_forward_hook(lambda m, a, out, i=i: self._save("attn_out", i, out[0])),
            ]

    def _save(self, site: str, layer: int, t: torch.Tensor) -> None:
        self.acts.setdefault((site, layer), []).append(t.detach().clone())

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def expected(acts: list[torch.Tensor], masks: list[torch.Tensor | None], criterion: str, threshold: float):
    """fire_count, abs_sum, tokens counted with numpy in float64 (exact for float32 and bf16 values)."""
    fire, abs_sum, tokens = 0, 0.0, 0
    for a, m in zip(acts, masks, strict=True):
        x = a.double().numpy().reshape(-1, a.shape[-1])
        if m is not None:
            x = x[m.numpy().reshape(-1) != 0]
        fires = np.abs(x) > threshold if criterion == "abs" else x > threshold
        fire = fire + fires.sum(axis=0)
        abs_sum = abs_sum + np.abs(x).sum(axis=0)
        tokens += x.shape[0]
    return np.asarray(fire, dtype=np.int64), np.asarray(abs_sum), tokens


def run(model, monitor, seeds, padded=True, capture=None):
    """Forward the batches of `seeds` (setting the monitor's mask); returns the masks used."""
    masks = []
    with torch.no_grad():
        for s in seeds:
            ids, mask = batch(s, padded=padded)
            monitor.set_attention_mask(mask)
            model(input_ids=ids, attention_mask=mask)
            masks.append(mask)
    return masks


def assert_counts_match(state, capture, masks, cfg: LivenessConfig, sites=SITES) -> None:
    for site in sites:
        for layer in range(N_LAYER):
            fire, abs_sum, tokens = expected(capture.acts[(site, layer)], masks, cfg.criterion, cfg.threshold)
            s = state["sites"][site]
            np.testing.assert_array_equal(
                s["fire_count"][layer].numpy(), fire, err_msg=f"{site} layer {layer}"
            )
            assert int(s["tokens"][layer]) == tokens
            np.testing.assert_allclose(s["abs_sum"][layer].numpy(), abs_sum, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize(
    "activation,criterion,padded",
    [
        ("relu", "abs", False),
        ("relu", "abs", True),
        ("relu", "positive", False),
        ("relu", "positive", True),
        ("gelu_new", "abs", True),
    ],
)
def test_counts_equal_an_independent_count(activation, criterion, padded) -> None:
    check_exact_counts(activation, criterion, padded)


@pytest.mark.parametrize("criterion", ["abs", "positive"])
def test_counts_through_the_comparison_path(monkeypatch, criterion) -> None:
    """The integer path taken by batches of 2**24 positions or more (forced here on a small batch)."""
    monkeypatch.setattr(liveness.counting, "_FLOAT_EXACT", 0)
    check_exact_counts("gelu_new", criterion, padded=True)


def check_exact_counts(activation: str, criterion: str, padded: bool) -> None:
    model = tiny_model(activation)
    cfg = LivenessConfig(criterion=criterion)
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    masks = run(model, monitor, seeds=[1, 2], padded=padded)
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)
    if padded:
        assert sum(int(m.sum()) for m in masks) < 2 * 6 * T  # the masks really drop positions

    rep = monitor.report().to_json()
    for site in SITES:
        for layer in range(N_LAYER):
            fire, abs_sum, tokens = expected(capture.acts[(site, layer)], masks, criterion, cfg.threshold)
            entry = rep["sites"][site][layer]
            freq = fire / tokens
            np.testing.assert_allclose(entry["frequency"], freq, rtol=0, atol=0)
            assert entry["dead_units"] == np.flatnonzero(freq < cfg.dead_frequency).tolist()
            score = abs_sum / abs_sum.mean()
            np.testing.assert_allclose(entry["dormancy"], score, rtol=1e-5)
            assert entry["dormant_units"] == np.flatnonzero(score <= cfg.tau).tolist()
    if activation == "relu":
        for layer, units in KILLED.items():
            post = rep["sites"]["mlp_post"][layer]
            assert set(units) <= set(post["dead_units"])
            assert all(post["fire_count"][j] == 0 for j in units)
            pre = rep["sites"]["mlp_pre"][layer]  # the pre-activation sits at -100: fires only by |a|
            assert all((j in pre["dead_units"]) == (criterion == "positive") for j in units)


class Pattern(nn.Module):
    """An "activation" whose units 0-2 output `values` and units 3-5 their negatives, everywhere; others 0."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[..., :3] = self.values.to(x.dtype)
        out[..., 3:6] = -self.values.to(x.dtype)
        return out


@pytest.mark.parametrize("float_path", [True, False])
def test_threshold_is_exact_at_the_dtype_boundary(monkeypatch, float_path) -> None:
    """`a > threshold` on the exact values, in float32 and bf16, for the three dtype numbers nearest 1e-3
    (float32 rounds 1e-3 up, so a naive float32 compare would miss activations equal to float32(1e-3))."""
    if not float_path:
        monkeypatch.setattr(liveness.counting, "_FLOAT_EXACT", 0)
    for dtype in (torch.float32, torch.bfloat16):
        near = torch.tensor(1e-3, dtype=dtype)
        ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[dtype]
        values = torch.stack([(near.view(ints) + d).view(dtype) for d in (-1, 0, 1)])
        fires = [float(v) > 1e-3 for v in values.double()]  # exact, in float64
        assert fires.count(True) in (1, 2) and fires[0] is False and fires[2] is True
        if dtype == torch.float32:
            assert fires[1]  # float32(1e-3) is above 1e-3: `a > 1e-3` in float32 would not count it
        model = tiny_model(kill=False).to(dtype)
        for block in model.transformer.h:
            block.mlp.act = Pattern(values)
        monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"]))
        run(model, monitor, seeds=[3], padded=False)
        fc = monitor.state_dict()["sites"]["mlp_post"]["fire_count"][0]
        assert fc[:6].tolist() == [6 * T * f for f in fires] * 2, dtype
        assert int(fc[6:].sum()) == 0


def test_inplace_and_parameterised_activations() -> None:
    model = tiny_model(kill=False)
    for block in model.transformer.h:
        block.mlp.act = nn.ReLU(inplace=True)
    cfg = LivenessConfig()
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    masks = run(model, monitor, seeds=[4], padded=True)
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)  # mlp_pre seen before ReLU overwrote it
    monitor.close()

    model = tiny_model(kill=False)
    for block in model.transformer.h:
        block.mlp.act = nn.PReLU(init=0.1)
    keys = list(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    monitor = LivenessMonitor(model, cfg)
    assert list(model.state_dict()) == keys and [n for n, _ in model.named_parameters()] == names
    assert "transformer.h.0.mlp.act.weight" in keys
    capture = Capture(model)
    masks = run(model, monitor, seeds=[4], padded=True)
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)


# ------------------------------------------------------------------------------------------- definitions


def test_dead_frequency_boundary() -> None:
    fire = np.array([1, 0, 2, 1000])
    at = layer_liveness(0, fire, np.ones(4), tokens=1000, dead_frequency=1e-3, tau=0.1)
    assert at.frequency == [0.001, 0.0, 0.002, 1.0]
    assert at.dead_units == [1] and at.dead_ratio == 0.25  # frequency == dead_frequency is alive
    above = layer_liveness(0, fire, np.ones(4), tokens=1000, dead_frequency=math.nextafter(1e-3, 1), tau=0.1)
    assert above.dead_units == [0, 1]
    more_tokens = layer_liveness(0, fire, np.ones(4), tokens=1001, dead_frequency=1e-3, tau=0.1)
    assert more_tokens.dead_units == [0, 1]  # 1/1001 < 1e-3
    strict = layer_liveness(0, fire, np.ones(4), tokens=1000, dead_frequency=0.0, tau=0.1)
    assert strict.dead_units == []


def test_dormancy_boundary_via_monitor_state() -> None:
    """Hand-built counters loaded into a monitor: score == tau is dormant, just above is not."""
    model = tiny_model(kill=False)
    monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"], tau=0.25))
    eps = 2.0**-20
    abs_sum = torch.ones(N_LAYER, N_INNER, dtype=torch.float64)  # mean over units 1.0: scores = abs_sum
    abs_sum[0, 0], abs_sum[0, 1] = 0.25, 1.75
    abs_sum[1, 0], abs_sum[1, 1] = 0.25 + eps, 1.75 - eps
    fire = torch.full((N_LAYER, N_INNER), 500, dtype=torch.int64)
    monitor.load_state_dict(
        {
            "version": 1,
            "sites": {
                "mlp_post": {"fire_count": fire, "abs_sum": abs_sum, "tokens": torch.tensor([1000, 1000])}
            },
        }
    )
    rep = monitor.report().to_json()
    l0, l1 = rep["sites"]["mlp_post"]
    assert l0["dormancy"][:2] == [0.25, 1.75] and l0["dormant_units"] == [0]
    assert l0["dormant_ratio"] == 1 / N_INNER
    assert l1["dormancy"][0] == 0.25 + eps and l1["dormant_units"] == []


def test_silent_layer_and_zero_tokens(caplog) -> None:
    silent = layer_liveness(
        0, np.zeros(4, dtype=np.int64), np.zeros(4), tokens=50, dead_frequency=1e-3, tau=0.1
    )
    assert silent.dormancy == [0.0] * 4 and silent.dormant_units == [0, 1, 2, 3]
    assert silent.dead_units == [0, 1, 2, 3]

    monitor = LivenessMonitor(tiny_model(kill=False), LivenessConfig())
    with caplog.at_level(logging.WARNING, logger="reviveformer.liveness"):
        rep = monitor.report()
    assert "0 observed tokens" in caplog.text
    assert rep.tokens == 0
    for site in SITES:
        for e in rep.sites[site]:
            assert e.frequency == [0.0] * UNITS[site] and e.dormancy == [0.0] * UNITS[site]
            assert e.dead_ratio == 1.0 and e.dormant_ratio == 1.0  # nothing observed: the rules call all dead
    assert rep.capacity["alive_units"] == 0


# ------------------------------------------------------------------------------------------- windows, state


def test_state_dict_round_trip_continues_counting() -> None:
    cfg = LivenessConfig()
    model = tiny_model()
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    masks = run(model, monitor, seeds=[5])
    state = monitor.state_dict()
    assert all(t.device.type == "cpu" for s in state["sites"].values() for t in s.values())
    masks += run(model, monitor, seeds=[6])  # the capture now holds both batches

    model2 = tiny_model()  # same seed, same weights
    monitor2 = LivenessMonitor(model2, cfg)
    monitor2.load_state_dict(state)
    run(model2, monitor2, seeds=[6])
    assert_counts_match(monitor2.state_dict(), capture, masks, cfg)

    with pytest.raises(CheckpointError, match="sites"):
        LivenessMonitor(tiny_model(), LivenessConfig(sites=["attn_out"])).load_state_dict(state)
    with pytest.raises(CheckpointError, match="version"):
        LivenessMonitor(tiny_model(), cfg).load_state_dict({**state, "version": 99})
    bad = {"version": 1, "sites": {s: dict(v) for s, v in state["sites"].items()}}
    bad["sites"]["mlp_post"]["fire_count"] = torch.zeros(N_LAYER, 3, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="mlp_post.fire_count"):
        LivenessMonitor(tiny_model(), cfg).load_state_dict(bad)


def _zero(state) -> bool:
    return all(not t.any() for s in state["sites"].values() for t in s.values())


def test_fresh_window_reset_and_inactive() -> None:
    cfg = LivenessConfig(criterion="positive")
    model = tiny_model()
    monitor = LivenessMonitor(model, cfg)
    run(model, monitor, seeds=[7])
    before = monitor.state_dict()
    assert not _zero(before)
    capture = Capture(model)
    with monitor.fresh_window():
        assert _zero(monitor.state_dict())
        masks = run(model, monitor, seeds=[8])
        assert_counts_match(monitor.state_dict(), capture, masks, cfg)  # the window holds batch 8 only
    after = monitor.state_dict()
    for site in SITES:
        for key in ("fire_count", "abs_sum", "tokens"):
            assert torch.equal(after["sites"][site][key], before["sites"][site][key])

    with monitor.paused():
        assert not monitor.active
        run(model, monitor, seeds=[9])
        assert (
            monitor.state_dict()["sites"]["mlp_post"]["tokens"].tolist()
            == before["sites"]["mlp_post"]["tokens"].tolist()
        )
        monitor.reset()
        assert _zero(monitor.state_dict())
        run(model, monitor, seeds=[9])
        assert _zero(monitor.state_dict())  # still paused
    assert monitor.active
    run(model, monitor, seeds=[9], padded=False)
    assert monitor.state_dict()["sites"]["attn_out"]["tokens"].tolist() == [6 * T] * N_LAYER


def test_sampling_policy_and_histogram_cadence_are_the_monitor_own() -> None:
    """liveness.sample_every=3, histogram_every=4: `begin_step(s)` counts steps 3, 6, 9, ... and requests a
    histogram at steps 4, 8, ...; `counting()` counts whatever the sampling left, `paused()` nothing; both
    restore the previous state (nested included)."""
    cfg = LivenessConfig(sample_every=3, histogram_every=4)
    model = tiny_model()
    monitor = LivenessMonitor(model, cfg)
    counted, due = [], []
    for step in range(1, 10):
        assert not monitor.histogram_next or step > 4
        monitor.begin_step(step)
        counted.append(monitor.active)
        due.append(monitor.histogram_due(step))
        if step == 4:
            assert monitor.histogram_next  # requested for step 4's forwards
    assert [s for s, c in zip(range(1, 10), counted, strict=True) if c] == [3, 6, 9]
    assert [s for s, d in zip(range(1, 10), due, strict=True) if d] == [4, 8]

    monitor.begin_step(1)  # not sampled
    monitor.reset()
    with monitor.counting():
        run(model, monitor, seeds=[1], padded=False)
        with monitor.paused():
            run(model, monitor, seeds=[2], padded=False)
        assert monitor.active
    assert not monitor.active  # the sampling's choice is back
    run(model, monitor, seeds=[3], padded=False)
    assert monitor.state_dict()["sites"]["mlp_post"]["tokens"].tolist() == [6 * T] * N_LAYER  # seed 1 only
    assert monitor.sampled(7) is False
    monitor.close()
    every = LivenessMonitor(tiny_model(), LivenessConfig())
    assert all(every.sampled(s) for s in range(1, 6)) and not every.histogram_due(5)


def test_mask_of_the_wrong_shape_is_an_error() -> None:
    model = tiny_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    monitor.set_attention_mask(torch.ones(3, T))
    with pytest.raises(ValueError, match="set_attention_mask"), torch.no_grad():
        model(input_ids=torch.zeros(6, T, dtype=torch.long))


def test_install_and_close_leave_the_model_as_it_was(tmp_path) -> None:
    model = tiny_model()
    ids, mask = batch(10)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    acts = [b.mlp.act for b in model.transformer.h]
    c_projs = [b.attn.c_proj for b in model.transformer.h]

    monitor = LivenessMonitor(model, LivenessConfig())
    assert list(model.state_dict()) == list(state) and [n for n, _ in model.named_parameters()] == names
    assert not any(isinstance(v, torch.Tensor) and v.dtype == torch.int64 for v in model.buffers())
    assert isinstance(model.transformer.h[0].attn.c_proj, Conv1D)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, logits)  # same function
    with pytest.raises(ValueError, match="already watched"):
        LivenessMonitor(model, LivenessConfig())

    model.save_pretrained(tmp_path / "ckpt")
    loaded, info = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (
        type(loaded.transformer.h[0].mlp.act) is nn.ReLU
        and type(loaded.transformer.h[0].attn.c_proj) is Conv1D
    )
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k

    monitor.close()
    for block, act, c_proj in zip(model.transformer.h, acts, c_projs, strict=True):
        assert block.mlp.act is act and type(act) is nn.ReLU and not hasattr(act, "_rf_probe")
        assert block.attn.c_proj is c_proj and type(c_proj) is Conv1D and not hasattr(c_proj, "_rf_probe")
    assert list(model.state_dict()) == list(state)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, logits)
    with pytest.raises(ValueError, match="closed"):
        monitor.report()
    again = LivenessMonitor(torch.compile(model), LivenessConfig())  # a wrapped model is unwrapped
    assert again.model is model and hasattr(model.transformer.h[0].mlp.act, "_rf_probe")
    again.close()


def test_counters_follow_the_model_and_keep_their_dtypes() -> None:
    model = tiny_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    model.to(torch.bfloat16)  # a dtype cast must not touch the counters (buffers would be cast)
    run(model, monitor, seeds=[11])
    sites = monitor.state_dict()["sites"]
    assert sites["mlp_post"]["fire_count"].dtype == torch.int64
    assert sites["mlp_post"]["abs_sum"].dtype == torch.float64
    assert int(sites["mlp_post"]["tokens"][0]) > 0
    model.to("meta")
    assert monitor.to("meta") is monitor and monitor._device().type == "meta"


def test_replaced_activation_is_detected_at_report() -> None:
    model = tiny_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    model.transformer.h[1].mlp.act = nn.GELU()
    with pytest.raises(ValueError, match=r"transformer.h\[1\]"):
        monitor.report()


# ------------------------------------------------------------------------------------------- histograms


def test_histograms_of_the_next_forward() -> None:
    cfg = LivenessConfig(histogram_bins=16)
    model = tiny_model("gelu_new")
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    monitor.request_histogram()
    assert monitor.histogram_next
    masks = run(model, monitor, seeds=[12, 13])  # only the first forward is histogrammed
    assert not monitor.histogram_next
    hists = monitor.histograms()
    assert sorted(hists) == sorted((s, i) for s in SITES for i in range(N_LAYER))
    # 8 log-spaced bins each side of a zero bin [-threshold, threshold], out to HISTOGRAM_RANGE
    side = np.geomspace(1e-3, HISTOGRAM_RANGE, 9)
    for (site, layer), (counts, edges) in hists.items():
        assert len(counts) == 17
        np.testing.assert_allclose(edges, np.concatenate([-side[::-1], side]), rtol=1e-6)
        x = capture.acts[(site, layer)][0].double().numpy().reshape(-1, UNITS[site])
        x = np.clip(x[masks[0].numpy().reshape(-1) != 0], -HISTOGRAM_RANGE, HISTOGRAM_RANGE).reshape(-1)
        want, _ = np.histogram(x, bins=edges)
        assert (
            counts.sum() == x.size
        )  # masked positions are left out, out-of-range values counted at the ends
        assert np.abs(counts - want).sum() <= 2  # at most a value on a bin edge counted on the other side
    assert monitor.histograms() == {}
    run(model, monitor, seeds=[14])
    assert monitor.histograms() == {}


# ------------------------------------------------------------------------------------------- report


def test_report_json_and_metrics() -> None:
    model = tiny_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    run(model, monitor, seeds=[15])
    rep = monitor.report()
    d = rep.to_json()
    assert list(d) == ["tokens", "threshold", "criterion", "dead_frequency", "tau", "sites", "capacity"]
    assert list(d["sites"]) == list(SITES)
    assert list(d["sites"]["mlp_post"][0]) == [
        "layer",
        "units",
        "fire_count",
        "frequency",
        "dead_ratio",
        "dead_units",
        "dormant_ratio",
        "dormancy",
        "dormant_units",
    ]
    assert list(d["capacity"]) == [
        "alive_units",
        "alive_fraction",
        "effective_params",
        "effective_param_fraction",
    ]
    again = json.loads(json.dumps(d))
    assert LivenessReport.from_json(again) == rep
    assert rep.dead_units() == {e["layer"]: e["dead_units"] for e in d["sites"]["mlp_post"]}

    m = rep.metrics()
    expected_keys = {f"liveness/{s}/dead_ratio" for s in SITES}
    expected_keys |= {
        f"liveness/{s}/layer_{i}/{r}"
        for s in SITES
        for i in range(N_LAYER)
        for r in ("dead_ratio", "dormant_ratio")
    }
    expected_keys |= {f"capacity/{k}" for k in d["capacity"]}
    assert set(m) == expected_keys and all(isinstance(v, float) for v in m.values())
    layers = d["sites"]["mlp_post"]
    dead = sum(len(e["dead_units"]) for e in layers)
    assert dead >= 4  # the killed units at least
    assert m["liveness/mlp_post/dead_ratio"] == dead / (N_LAYER * N_INNER)
    assert m["capacity/alive_units"] == N_LAYER * N_INNER - dead

    no_mlp = LivenessMonitor(tiny_model(), LivenessConfig(sites=["attn_out"]))
    rep2 = no_mlp.report()
    assert rep2.capacity is None and "capacity" not in rep2.to_json()
    assert not any(k.startswith("capacity/") for k in rep2.metrics())
    with pytest.raises(ValueError, match="mlp_post"):
        rep2.dead_units()


def test_capacity_by_hand() -> None:
    model = tiny_model()
    e, i = N_EMBD, N_INNER
    per_block = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * i + i) + (i * e + e)
    trainable = VOCAB * e + 32 * e + N_LAYER * per_block + 2 * e  # lm_head is tied to wte
    dead = {0: [1, 2], 1: [7]}
    masks = {0: torch.zeros(e, i, dtype=torch.bool), 1: torch.zeros(e, i, dtype=torch.bool)}
    masks[0][0, 1] = True  # inside dead unit 1's column: already subtracted with the unit
    masks[0][5, 10] = masks[0][6, 10] = masks[0][0, 200] = True
    masks[1][3, 7] = True  # dead unit 7's column
    masks[1][3, 8] = True
    cap = capacity(model, dead, masks)
    per_unit = e + 1 + e  # c_fc column, c_fc bias, c_proj row
    effective = trainable - 3 * per_unit - 4
    assert cap == {
        "alive_units": 2 * i - 3,
        "alive_fraction": (2 * i - 3) / (2 * i),
        "effective_params": effective,
        "effective_param_fraction": effective / trainable,
    }
    assert capacity(model, {}, None)["effective_params"] == trainable
    # a unit listed twice, or as an array, is one dead unit; an index past the layer's units is refused
    twice = {0: np.array([2, 1, 2]), 1: [7, 7]}
    assert capacity(model, twice, masks) == cap
    with pytest.raises(ValueError, match=f"dead unit indices 1..{i} out of range for {i} units in layer 0"):
        capacity(model, {0: [1, i]}, None)

    model.transformer.h[1].mlp.c_proj.weight.requires_grad_(False)  # frozen weights are not trainable
    cap = capacity(model, dead, None)
    frozen = i * e
    assert cap["effective_params"] == trainable - frozen - 3 * (e + 1) - 2 * e

    # report() passes the model it watches and the masks through
    model = tiny_model()
    monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"]))
    run(model, monitor, seeds=[16])
    rep = monitor.report(pruned_masks=masks)
    assert rep.capacity == capacity(model, rep.dead_units(), masks)
    assert set(KILLED[0]) <= set(rep.dead_units()[0])


# ------------------------------------------------------------------------------------------- compile, bf16


def test_compiled_model_counts_equal_eager_counts() -> None:
    """aot_eager: dynamo traces the counting into the graph as for Inductor, without the C++ compile (what
    Inductor makes of it: test_compile_structure)."""
    cfg = LivenessConfig()
    eager, compiled = tiny_model("gelu_new"), tiny_model("gelu_new")
    m_eager, m_compiled = LivenessMonitor(eager, cfg), LivenessMonitor(compiled, cfg)
    fn = torch.compile(compiled, fullgraph=True, backend="aot_eager")  # fullgraph: counting must not break it
    for seed in (17, 18):
        ids, mask = batch(seed)
        for monitor, model in ((m_eager, eager), (m_compiled, fn)):
            monitor.set_attention_mask(mask)
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
    a, b = m_eager.state_dict()["sites"], m_compiled.state_dict()["sites"]
    for site in SITES:
        assert torch.equal(a[site]["fire_count"], b[site]["fire_count"]), site
        assert torch.equal(a[site]["tokens"], b[site]["tokens"]), site
        torch.testing.assert_close(a[site]["abs_sum"], b[site]["abs_sum"], rtol=1e-5, atol=1e-6)
    assert int(b["mlp_post"]["tokens"][0]) == sum(int(batch(s)[1].sum()) for s in (17, 18))


def test_bf16_autocast_counts_the_bf16_activations_exactly() -> None:
    """Under autocast the sites are bf16 tensors; their values are exact in float64, so the independent
    float64 count must agree integer for integer (threshold compared exactly, see the dtype-boundary test)."""
    cfg = LivenessConfig()
    model = tiny_model("gelu_new")
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks = run(model, monitor, seeds=[19, 20])
    assert capture.acts[("mlp_post", 0)][0].dtype == torch.bfloat16
    assert capture.acts[("attn_out", 1)][0].dtype == torch.bfloat16
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)


# ------------------------------------------------------------------------------------------- distributed


def _launch(n: int, out: Path) -> dict:
    data = launch_findings("dist_liveness_script.py", out, processes=n, timeout=180)
    assert data["num_processes"] == n
    return data["report"]


@pytest.mark.slow
def test_two_processes_count_what_one_process_counts(tmp_path) -> None:
    one = _launch(1, tmp_path / "one.json")
    two = _launch(2, tmp_path / "two.json")
    assert one["tokens"] == two["tokens"] > 0
    for site in SITES:
        for a, b in zip(one["sites"][site], two["sites"][site], strict=True):
            assert a["fire_count"] == b["fire_count"], site
            assert a["dead_units"] == b["dead_units"], site
            np.testing.assert_allclose(a["dormancy"], b["dormancy"], rtol=1e-5)
    assert one["capacity"] == two["capacity"]
    assert set(KILLED[0]) <= set(two["sites"]["mlp_post"][0]["dead_units"])


# ------------------------------------------------------------------------------------------- fused counting, counts


@pytest.mark.parametrize(
    "criterion,padded,dtype",
    [
        ("abs", True, torch.float32),
        ("positive", True, torch.float32),
        ("abs", False, torch.float32),
        ("positive", True, torch.bfloat16),
    ],
)
def test_compiled_counting_kernel_counts_exactly(criterion, padded, dtype) -> None:
    """liveness.counting=compiled (one torch.compile'd pass per site, in an eager model) against the
    independent numpy count: the same integers as the eager reference path."""
    cfg = LivenessConfig(criterion=criterion, counting="compiled")
    model = tiny_model("gelu_new")
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        masks = run(model, monitor, seeds=[21, 22], padded=padded)
    assert capture.acts[("mlp_post", 0)][0].dtype == dtype
    assert liveness._KERNEL, "the compiled kernel was not used"
    assert_counts_match(monitor.state_dict(), capture, masks, cfg)


def test_compiled_counting_is_exact_at_the_dtype_boundary() -> None:
    """The threshold boundary of `test_threshold_is_exact_at_the_dtype_boundary`, through the compiled kernel."""
    for dtype in (torch.float32, torch.bfloat16):
        near = torch.tensor(1e-3, dtype=dtype)
        ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[dtype]
        values = torch.stack([(near.view(ints) + d).view(dtype) for d in (-1, 0, 1)])
        fires = [float(v) > 1e-3 for v in values.double()]  # exact, in float64
        model = tiny_model(kill=False).to(dtype)
        for block in model.transformer.h:
            block.mlp.act = Pattern(values)
        monitor = LivenessMonitor(model, LivenessConfig(sites=["mlp_post"], counting="compiled"))
        run(model, monitor, seeds=[3], padded=False)
        fc = monitor.state_dict()["sites"]["mlp_post"]["fire_count"][0]
        assert fc[:6].tolist() == [6 * T * f for f in fires] * 2, dtype
        assert int(fc[6:].sum()) == 0


def test_counts_give_the_reports_metrics_without_per_unit_lists() -> None:
    """`counts()` (what each train log uses: one flat tensor, one reduce) holds the independent counts, and
    its metrics and frequencies equal those of the full report; the pruned masks ride in the same tensor."""
    cfg = LivenessConfig()
    model = tiny_model()
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    masks = run(model, monitor, seeds=[23, 24])
    pruned = {
        0: torch.zeros(N_EMBD, N_INNER, dtype=torch.bool),
        1: torch.zeros(N_EMBD, N_INNER, dtype=torch.bool),
    }
    pruned[0][2, 40] = pruned[0][9, 40] = pruned[1][0, 5] = (
        True  # unit 5 of layer 1 is dead: not subtracted twice
    )
    reduced = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        reduced.append(t.shape)
        return t * 2  # as if a second process had counted the same

    counts = monitor.counts(reduce=reduce, pruned_masks=pruned)
    assert len(reduced) == 1 and len(reduced[0]) == 1  # one flat tensor, one collective
    for site in SITES:
        for layer in range(N_LAYER):
            fire, abs_sum, tokens = expected(capture.acts[(site, layer)], masks, cfg.criterion, cfg.threshold)
            np.testing.assert_array_equal(counts.fire_count[site][layer], 2 * fire)
            assert counts.fire_count[site].dtype == np.int64
            assert counts.tokens[site][layer] == 2 * tokens
            np.testing.assert_allclose(counts.abs_sum[site][layer], 2 * abs_sum, rtol=1e-5)
    rep = monitor.report(reduce=lambda t: t * 2, pruned_masks=pruned)
    assert counts.metrics() == rep.metrics()
    assert counts.report() == rep
    for site, freq in counts.frequencies().items():
        np.testing.assert_array_equal(freq, rep.frequencies()[site])
    assert rep.capacity == capacity(model, rep.dead_units(), pruned)
    with pytest.raises(ValueError, match=rf"incoming weight \({N_EMBD}, {N_INNER}\)"):
        monitor.counts(pruned_masks={0: torch.zeros(N_EMBD, 3, dtype=torch.bool)})


def test_frequency_histogram_cadence_by_hand() -> None:
    """The train log at which `liveness.frequency_histogram_every` falls due, whatever `train.log_every` is."""
    from reviveformer.trainer import reaches_multiple

    def due(log_every, every, last=100):
        return [s for s in range(log_every, last + 1, log_every) if reaches_multiple(s, log_every, every)]

    assert due(10, 50) == [50, 100]
    assert due(10, 25) == [30, 50, 80, 100]  # the log that reaches 25 is step 30, 75 -> 80
    assert due(30, 20) == [30, 60, 90]  # a cadence finer than the logs: every log
    assert due(10, 0) == []


def test_trainer_hooks_and_frequency_histograms_at_their_cadence(tmp_path, corpus_file, monkeypatch) -> None:
    """`after_train_log` runs after each train log with the liveness window already reset;
    `before_epoch_end` once per epoch end; W&B frequency histograms (offline) only at the train log that
    reaches a multiple of liveness.frequency_histogram_every, and at the epoch end."""
    from conftest import tiny_overrides
    from reviveformer.config import load_config
    from reviveformer.tracking import Tracking
    from reviveformer.trainer import Trainer

    cfg = load_config(
        REPO / "recipes" / "quickstart.yaml",
        tiny_overrides(
            tmp_path / "run",
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 12,
                "train.log_every": 4,
                "train.epochs": 1,
                "wandb.mode": "offline",
                "liveness.frequency_histogram_every": 8,
            },
        ),
    )
    trainer = Trainer(cfg)
    logs, epoch_ends, frequency_steps = [], [], []
    trainer.after_train_log.append(lambda t: logs.append((t.step, _zero(t.monitor.state_dict()))))
    trainer.before_epoch_end.append(lambda t: epoch_ends.append(t.step))
    log_histograms = Tracking.log_histograms

    def recording(self, hists, step):
        if any(k.endswith("/frequency") for k in hists):
            frequency_steps.append(step)
        log_histograms(self, hists, step)

    monkeypatch.setattr(Tracking, "log_histograms", recording)
    trainer.run()
    assert logs == [(4, True), (8, True), (12, True)]
    assert epoch_ends == [12]
    assert frequency_steps == [
        8,
        12,
    ]  # the train log at 8, then the epoch end at 12 (not the train log at 4, 12)


# ------------------------------------------------------------------------------------------- site registry


@pytest.fixture
def ln2_site():
    """A test-only site: the output of each block's ln_2 (n_embd wide), registered for the test only."""
    from reviveformer.architectures import Site, SiteLocation, register_site, unregister_site

    site = register_site(
        Site("ln2_out", "n_embd", "the output of the second layer norm"), gpt2=SiteLocation("ln_2", "output")
    )
    try:
        yield site.name
    finally:
        unregister_site(site.name)


def test_a_registered_site_is_counted_exactly_against_a_hook(ln2_site) -> None:
    """One registry entry is all a new site needs: config accepts it, the monitor counts it on its module, and
    the counts equal numpy's count of a plain forward hook's captures on ln_2."""
    from reviveformer.architectures import site_order
    from reviveformer.figures.common import site_color

    model = tiny_model("relu")
    cfg = LivenessConfig(sites=["mlp_post", ln2_site])
    captured: dict[int, list[torch.Tensor]] = {}
    handles = [
        block.ln_2.register_forward_hook(
            lambda m, a, out, i=i: captured.setdefault(i, []).append(out.clone())
        )
        for i, block in enumerate(model.transformer.h)
    ]
    capture = Capture(model)
    monitor = LivenessMonitor(model, cfg)
    masks = run(model, monitor, seeds=[1, 2], padded=True)
    for h in handles:
        h.remove()
    capture.close()
    capture.acts.update({(ln2_site, i): acts for i, acts in captured.items()})
    state = monitor.state_dict()
    assert state["sites"][ln2_site]["fire_count"].shape == (N_LAYER, N_EMBD)
    assert_counts_match(state, capture, masks, cfg, sites=("mlp_post", ln2_site))
    rep = monitor.report()
    assert list(rep.sites) == ["mlp_post", ln2_site]  # registry order
    assert f"liveness/{ln2_site}/layer_1/dead_ratio" in rep.metrics()
    assert type(model.transformer.h[0].ln_2).__name__ == "CountingLayerNorm"
    monitor.close()
    assert type(model.transformer.h[0].ln_2) is nn.LayerNorm and not hasattr(
        model.transformer.h[0].ln_2, "_rf_probe"
    )
    assert site_order(["zz", ln2_site, "mlp_pre"]) == ["mlp_pre", ln2_site, "zz"]
    assert site_color(ln2_site, 0) == "tab:red"  # fourth entry of the registry


def test_a_site_is_valid_only_while_registered() -> None:
    from reviveformer.architectures import Site, SiteLocation, register_site, unregister_site

    with pytest.raises(
        ValueError,
        match=r"liveness.sites=\['ln2_out'\] must be a non-empty subset of "
        r"mlp_pre, mlp_post, attn_out",
    ):
        LivenessConfig(sites=["ln2_out"])
    with pytest.raises(ValueError, match="reads the output of mlp.act, as 'mlp_post' does"):
        register_site(
            Site("post_again", "n_inner", "the same tensor twice"), gpt2=SiteLocation("mlp.act", "output")
        )
    register_site(Site("ln2_out", "n_embd", "test"), gpt2=SiteLocation("ln_2", "output"))
    try:
        assert LivenessConfig(sites=["ln2_out"]).sites == ["ln2_out"]
    finally:
        unregister_site("ln2_out")
    assert "ln2_out" not in LivenessConfig().sites
