"""Activation histograms: a zero bin of the liveness threshold's width and log-spaced bins around it. Known
values land in the bins they were built for, counts exact; random activations are binned exactly as explicit
interval comparisons in numpy say; the zero bin holds exactly the values that do not fire."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_liveness import N_INNER, UNITS, Capture, run, tiny_model

from reviveformer.config import LivenessConfig
from reviveformer.liveness import HISTOGRAM_RANGE, HISTOGRAM_ZERO_MIN, LivenessMonitor, histogram_edges

B, T = 6, 16  # test_liveness.batch: 6 sequences of 16 positions


def test_edges_layout() -> None:
    edges = histogram_edges(64, 1e-3)
    assert len(edges) == 66  # 65 bins: 32 each side of the zero bin
    np.testing.assert_array_equal(edges, -edges[::-1])
    assert np.all(np.diff(edges) > 0)
    z = edges[33]
    assert z <= 1e-3 < float(np.nextafter(np.float32(z), np.float32(1)))  # the largest float32 <= threshold
    assert edges[-1] == pytest.approx(HISTOGRAM_RANGE, rel=1e-6)
    ratios = edges[34:] / edges[33:-1]
    np.testing.assert_allclose(ratios, 10 ** (4 / 32), rtol=1e-5)  # 8 bins per decade from 1e-3 to 10
    assert len(histogram_edges(7, 1e-3)) == 8  # an odd count is kept
    assert histogram_edges(8, 0.0)[5] == np.float32(HISTOGRAM_ZERO_MIN)  # threshold 0: a small zero bin


def bias_model(values: np.ndarray):
    """A GPT-2 whose layer-0 mlp_pre is `values` (N_INNER of them) at every position: c_fc weight 0, bias the
    values (0 * x sums to exactly 0, so the bias comes through unrounded)."""
    model = tiny_model("relu", kill=False)
    with torch.no_grad():
        fc = model.transformer.h[0].mlp.c_fc
        fc.weight.zero_()
        fc.bias.copy_(torch.from_numpy(values.astype(np.float32)))
    return model


def test_known_values_land_in_their_bins() -> None:
    bins = 16  # 8 each side: edges 1e-3 * 10 ** (k / 2), k = 0..8
    cfg = LivenessConfig(histogram_bins=bins, sites=["mlp_pre", "mlp_post"])
    e = 1e-3 * 10 ** (np.arange(9) / 2)  # the positive edges, worked out by hand
    below = float(np.nextafter(np.float32(1e-3), np.float32(0)))  # largest float32 under 1e-3: does not fire
    values, want = [], np.zeros(17, dtype=np.int64)

    def put(value: float, bin_index: int, n: int = 1) -> None:
        values.extend([value] * n)
        want[bin_index] += n

    put(0.0, 8, 40)  # exact zeros: the zero bin (index 8)
    put(below, 8, 3)
    put(-below, 8, 3)
    put(2e-3, 9, 5)  # (1e-3, 3.16e-3]: first positive bin
    put(-2e-3, 7, 5)
    for k in range(1, 9):  # the geometric middle of every bin on both sides, k + 1 values each
        mid = float(np.sqrt(e[k - 1] * e[k]))
        put(mid, 8 + k, k + 1)
        put(-mid, 8 - k, k + 1)
    put(1e3, 16, 4)  # beyond the range: the outermost bins
    put(-1e3, 0, 2)
    rest = N_INNER - len(values)
    put(0.0, 8, rest)
    vals = np.asarray(values)
    monitor = LivenessMonitor(bias_model(vals), cfg)
    monitor.request_histogram()
    run(monitor.model, monitor, seeds=[3], padded=False)
    hists = monitor.histograms()
    positions = B * T
    counts, edges = hists[("mlp_pre", 0)]
    np.testing.assert_allclose(edges[9:], e, rtol=1e-6)
    np.testing.assert_array_equal(counts, want * positions)
    # mlp_post = relu(mlp_pre): every negative value moves to the zero bin
    post, _ = hists[("mlp_post", 0)]
    want_post = want.copy()
    want_post[8] += want[:8].sum()
    want_post[:8] = 0
    np.testing.assert_array_equal(post, want_post * positions)


def interval_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The contract, written as explicit comparisons: zero bin [-z, z], positive bins (e[k-1], e[k]], negative
    bins [-e[k], -e[k-1]), values beyond the range in the outermost bins."""
    mid = len(edges) // 2 - 1  # index of the zero bin
    pos = edges[mid + 1 :]
    out = np.zeros(len(edges) - 1, dtype=np.int64)
    out[mid] = np.sum(np.abs(x) <= pos[0])
    for k in range(1, len(pos)):
        hi = np.inf if k == len(pos) - 1 else pos[k]
        out[mid + k] = np.sum((x > pos[k - 1]) & (x <= hi))
        out[mid - k] = np.sum((x < -pos[k - 1]) & (x >= -hi))
    return out


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_random_activations_match_interval_counts(activation) -> None:
    cfg = LivenessConfig(histogram_bins=24)
    model = tiny_model(activation)
    monitor = LivenessMonitor(model, cfg)
    capture = Capture(model)
    monitor.request_histogram()
    masks = run(model, monitor, seeds=[21])  # padded: masked positions are not counted
    hists = monitor.histograms()
    for (site, layer), (counts, edges) in hists.items():
        x = capture.acts[(site, layer)][0].double().numpy().reshape(-1, UNITS[site])
        x = x[masks[0].numpy().reshape(-1) != 0].reshape(-1)
        np.testing.assert_array_equal(counts, interval_counts(x, edges), err_msg=f"{site} layer {layer}")
        assert counts.sum() == x.size


def test_zero_bin_is_what_does_not_fire() -> None:
    """Under criterion abs the zero bin counts exactly the (position, unit) pairs that did not fire."""
    cfg = LivenessConfig(histogram_bins=64)
    model = tiny_model("relu")  # some units killed: a real spike at zero
    monitor = LivenessMonitor(model, cfg)
    monitor.request_histogram()
    run(model, monitor, seeds=[5])  # one forward: the histogram and the counts see the same positions
    state = monitor.state_dict()
    hists = monitor.histograms()
    for (site, layer), (counts, _) in hists.items():
        s = state["sites"][site]
        not_firing = int(s["tokens"][layer]) * UNITS[site] - int(s["fire_count"][layer].sum())
        assert counts[32] == not_firing, (site, layer)
    assert hists[("mlp_post", 0)][0][32] > 0


def test_figure_shows_the_zero_bin() -> None:
    from matplotlib.patches import StepPatch

    from reviveformer import figures

    edges = histogram_edges(16, 1e-3)
    counts = np.arange(17, dtype=np.int64)
    counts[8] = 120  # the spike: 120 of 256 values
    fig = figures.activation_histograms_figure({("mlp_post", 0): (counts, edges)})
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    [step] = [p for p in ax.patches if isinstance(p, StepPatch)]
    np.testing.assert_array_equal(step.get_data().edges, edges)
    assert ax.get_legend().get_texts()[0].get_text() == f"layer 0: {120 / counts.sum():.0%} in zero bin"


def test_compiled_histogram_equals_eager() -> None:
    """fullgraph compile: the histogram code has no graph break (so no host sync) and bins the same. aot_eager:
    dynamo traces the same graph as for Inductor, without the C++ compile (what Inductor makes of it:
    test_compile_structure)."""
    cfg = LivenessConfig(histogram_bins=32)
    eager, compiled = tiny_model("gelu_new"), tiny_model("gelu_new")
    m_eager, m_compiled = LivenessMonitor(eager, cfg), LivenessMonitor(compiled, cfg)
    fn = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for monitor, model in ((m_eager, eager), (m_compiled, fn)):
        monitor.request_histogram()
        run(model, monitor, seeds=[8])
    a, b = m_eager.histograms(), m_compiled.histograms()
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0], err_msg=str(key))
