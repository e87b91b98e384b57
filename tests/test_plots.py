"""Plots render valid PNGs headless, on normal and edge-case inputs, and draw the data they are given."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.image import AxesImage

from reviveformer import figures
from reviveformer.run_files import atomic_write, last, read_metrics, series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def assert_png(path, min_px: int = 200) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert min_px <= h <= 4000 and min_px <= w <= 4000, (h, w)
    assert img.std() > 0.01  # not a blank canvas
    return img


def layer(i: int, freq: list[float], dead_frequency: float = 1e-3) -> dict:
    f = np.asarray(freq)
    dead = np.flatnonzero(f < dead_frequency)
    return {
        "layer": i,
        "units": len(freq),
        "fire_count": [int(round(x * 1000)) for x in freq],
        "frequency": list(freq),
        "dead_ratio": len(dead) / len(freq),
        "dead_units": dead.tolist(),
        "dormant_ratio": 0.0,
    }


def liveness(sites: dict[str, list[dict]], tokens: int = 1000) -> dict:
    return {
        "tokens": tokens,
        "threshold": 1e-3,
        "criterion": "abs",
        "dead_frequency": 1e-3,
        "tau": 0.1,
        "sites": sites,
    }


def synthetic(n_layer: int = 2, mlp: int = 64, attn: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sites = {}
    for site, units in (("mlp_pre", mlp), ("mlp_post", mlp), ("attn_out", attn)):
        rows = []
        for i in range(n_layer):
            f = rng.random(units)
            f[: units // 4] = 0.0  # a quarter never fire
            rows.append(layer(i, f.round(3).tolist()))
        sites[site] = rows
    return liveness(sites)


# ------------------------------------------------------------------------------ heatmap


def test_frequency_matrix_is_sorted_frequencies_in_layer_order() -> None:
    layers = [layer(1, [0.0, 0.9, 0.2, 0.5]), layer(0, [0.3, 0.0, 1.0, 0.1])]
    mat = figures.frequency_matrix(layers)
    # By hand: layer 0 sorted descending, then layer 1.
    assert mat.tolist() == [[1.0, 0.3, 0.1, 0.0], [0.9, 0.5, 0.2, 0.0]]


def test_frequency_matrix_pads_narrower_layers_with_nan() -> None:
    mat = figures.frequency_matrix([layer(0, [0.1, 0.7, 0.4]), layer(1, [0.2])])
    assert mat[0].tolist() == [0.7, 0.4, 0.1]
    assert mat[1, 0] == 0.2 and np.isnan(mat[1, 1:]).all()


def test_heatmap_draws_the_sorted_frequencies() -> None:
    live = liveness(
        {
            "mlp_post": [layer(0, [0.5, 0.0, 1.0]), layer(1, [0.0, 0.0, 0.25])],
            "attn_out": [layer(0, [0.1, 0.3]), layer(1, [0.6, 0.2])],
        }
    )
    fig = figures.frequency_heatmap_figure(live, scale="linear")
    images = [im for ax in fig.axes for im in ax.get_images() if isinstance(im, AxesImage)]
    assert len(images) == 2  # one panel per site, design order: mlp_post before attn_out
    assert np.asarray(images[0].get_array()).tolist() == [[1.0, 0.5, 0.0], [0.25, 0.0, 0.0]]
    assert np.asarray(images[1].get_array()).tolist() == [[0.3, 0.1], [0.6, 0.2]]
    titles = [ax.get_title() for ax in fig.axes]
    assert "mlp_post  (3 units)" in titles and "attn_out  (2 units)" in titles
    # Dead-ratio bars per layer beside the mlp_post heatmap: 1/3 and 2/3.
    bars = [p.get_width() for ax in fig.axes if ax.get_title() == "dead" for p in ax.patches]
    assert bars[:2] == pytest.approx([1 / 3, 2 / 3])


def test_heatmap_rows_are_labelled_with_each_sites_own_layers(tmp_path) -> None:
    live = liveness(
        {
            "mlp_post": [layer(0, [0.5, 0.1]), layer(1, [0.2, 0.0])],
            "attn_out": [layer(5, [0.3]), layer(2, [0.9])],  # sparse, unordered layers
        }
    )
    fig = figures.frequency_heatmap_figure(live)
    figures.save_figure(fig, tmp_path / "h.png")  # tick labels are formatted at draw time
    fig = figures.frequency_heatmap_figure(live)
    fig.savefig(tmp_path / "h2.png")
    heat = [ax for ax in fig.axes if ax.get_images()]
    labels = [[t.get_text() for t in ax.get_yticklabels()] for ax in heat]
    assert labels == [["0", "1"], ["2", "5"]]


def test_heatmap_log_scale_draws_never_fired_below_the_scale() -> None:
    live = liveness({"mlp_post": [layer(0, [0.5, 0.0, 0.01])]}, tokens=1000)
    fig = figures.frequency_heatmap_figure(live, scale="log")
    (im,) = [im for ax in fig.axes for im in ax.get_images()]
    drawn = np.asarray(im.get_array())
    assert drawn[0, :2].tolist() == [0.5, 0.01]
    assert drawn[0, 2] < im.norm.vmin == pytest.approx(1 / 1000)  # "under" colour, not a blank cell


def test_plot_frequency_heatmap_png(tmp_path) -> None:
    out = figures.plot_frequency_heatmap(synthetic(), tmp_path / "plots" / "deep" / "heat.png")
    assert out == tmp_path / "plots" / "deep" / "heat.png"
    assert_png(out)


def test_heatmap_edge_cases(tmp_path) -> None:
    all_dead = synthetic()
    all_dead["sites"]["mlp_post"][1] = layer(1, [0.0] * 64)
    assert_png(figures.plot_frequency_heatmap(all_dead, tmp_path / "all_dead.png"))

    single = synthetic(n_layer=1)
    del single["sites"]["mlp_pre"]  # missing site
    assert_png(figures.plot_frequency_heatmap(single, tmp_path / "single.png", scale="linear"))

    many = synthetic(n_layer=48, mlp=32, attn=8)
    assert_png(figures.plot_frequency_heatmap(many, tmp_path / "many.png"))

    with pytest.raises(ValueError, match="no sites"):
        figures.plot_frequency_heatmap(liveness({}), tmp_path / "none.png")
    with pytest.raises(ValueError, match="scale"):
        figures.plot_frequency_heatmap(synthetic(), tmp_path / "x.png", scale="sqrt")


# ------------------------------------------------------------------------------ histograms


def hists(layers: int = 2) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for site in ("mlp_pre", "mlp_post", "attn_out"):
        for i in range(layers):
            x = rng.normal(0, 1 + i, 2000)
            if site == "mlp_post":
                x = np.maximum(x, 0)
            out[(site, i)] = np.histogram(x, bins=32)
    return out


def test_activation_histograms_png_and_lines(tmp_path) -> None:
    h = hists(layers=3)
    assert_png(figures.plot_activation_histograms(h, tmp_path / "hist.png"))
    fig = figures.activation_histograms_figure(h, layers=[0, 2])
    ax = fig.axes[0]
    assert ax.get_title() == "mlp_pre" and ax.get_yscale() == "log"
    assert [ln.get_label() for ln in ax.get_lines()] == ["layer 0", "layer 2"]
    counts, edges = h[("mlp_pre", 2)]
    x, y = ax.get_lines()[1].get_data()
    np.testing.assert_allclose(x, (edges[:-1] + edges[1:]) / 2)
    np.testing.assert_array_equal(np.nan_to_num(y), counts)  # zero counts are masked (log axis)


def test_activation_histograms_edge_cases(tmp_path) -> None:
    one = {("mlp_post", 0): (np.array([0, 5, 3]), np.array([0.0, 1.0, 2.0, 3.0]))}
    assert_png(figures.plot_activation_histograms(one, tmp_path / "one.png"), min_px=150)
    assert_png(figures.plot_activation_histograms(hists(layers=12), tmp_path / "many.png"))
    with pytest.raises(ValueError, match="bin edges"):
        figures.activation_histograms_figure({("mlp_post", 0): (np.ones(3), np.ones(7))})


# ------------------------------------------------------------------------------ dead ratio per layer


def test_dead_ratio_per_layer(tmp_path) -> None:
    live = synthetic(n_layer=3)
    live["sites"]["attn_out"][2] = layer(2, [0.0] * 16)
    assert_png(figures.plot_dead_ratio_per_layer(live, tmp_path / "dpl.png", title="Audit"))
    fig = figures.dead_ratio_per_layer_figure(live)
    lines = {ln.get_label(): ln.get_data() for ln in fig.axes[0].get_lines()}
    assert list(lines) == ["mlp_pre", "mlp_post", "attn_out"]
    x, y = lines["attn_out"]
    assert list(x) == [0, 1, 2] and y[2] == 1.0 and y[0] == pytest.approx(4 / 16)

    single = liveness({"mlp_post": [layer(0, [0.0, 0.5])]})
    assert_png(figures.plot_dead_ratio_per_layer(single, tmp_path / "single.png"))


# ------------------------------------------------------------------------------ over training


def write_metrics(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_dead_ratio_over_training_from_file(tmp_path) -> None:
    rows = []
    for step in (10, 20, 30):
        r = {"step": step, "train/loss": 3.0}
        for site in ("mlp_post", "attn_out"):
            for i in range(2):
                r[f"liveness/{site}/layer_{i}/dead_ratio"] = step / 100 + i / 10
            r[f"liveness/{site}/dead_ratio"] = step / 100 + 0.05
        rows.append(r)
    rows.append({"step": 35, "val/loss": 2.9})  # a row without liveness keys
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, rows)
    with path.open("a") as f:
        f.write('{"step": 40, "liveness/mlp_po')  # a run killed mid-line
    assert_png(figures.plot_dead_ratio_over_training(path, tmp_path / "over.png"))

    fig = figures.dead_ratio_over_training_figure(path)
    ax = fig.axes[0]
    assert ax.get_title() == "mlp_post"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["layer 0", "layer 1", "all layers"]
    x, y = lines["layer 1"].get_data()
    assert list(x) == [10, 20, 30] and np.allclose(y, [0.2, 0.3, 0.4])
    assert lines["all layers"].get_color() == "black"


def test_dead_ratio_over_training_partial_keys(tmp_path) -> None:
    # Only the overall ratio of one site, and one layer of another, logged at different steps.
    rows = [
        {"step": 5, "liveness/mlp_post/dead_ratio": 0.1},
        {"step": 10, "liveness/mlp_post/dead_ratio": 0.2, "liveness/attn_out/layer_3/dead_ratio": 0.5},
    ]
    assert_png(figures.plot_dead_ratio_over_training(rows, tmp_path / "partial.png"))
    fig = figures.dead_ratio_over_training_figure(rows)
    assert [ax.get_title() for ax in fig.axes] == ["mlp_post", "attn_out"]
    (single,) = fig.axes[1].get_lines()
    assert single.get_marker() == "o"  # one point: drawn as a marker

    with pytest.raises(ValueError, match="dead_ratio"):
        figures.dead_ratio_over_training_figure([{"step": 1, "train/loss": 2.0}])


def test_resumed_run_keeps_last_value_per_step() -> None:
    rows = [
        {"step": 10, "liveness/mlp_post/dead_ratio": 0.1},
        {"step": 20, "liveness/mlp_post/dead_ratio": 0.9},  # logged, then the run was killed and resumed
        {"step": 20, "liveness/mlp_post/dead_ratio": 0.2},
    ]
    fig = figures.dead_ratio_over_training_figure(rows)
    x, y = fig.axes[0].get_lines()[0].get_data()
    assert list(x) == [10, 20] and list(y) == [0.1, 0.2]


# ------------------------------------------------------------------------------ comparing runs


def run_rows(scale: float) -> list[dict]:
    return [
        {"step": s, "val/loss": scale * (3 - s / 100), "liveness/mlp_post/dead_ratio": scale * s / 200}
        for s in (0, 50, 100)
    ]


def test_runs_metric_over_training(tmp_path) -> None:
    runs = {"baseline": run_rows(1.0), "stripping": run_rows(0.5), "no_liveness": [{"step": 0, "x": 1}]}
    assert_png(figures.plot_runs_metric_over_training(runs, "val/loss", tmp_path / "loss.png", ylabel="loss"))
    fig = figures.runs_metric_over_training_figure(runs, "liveness/mlp_post/dead_ratio")
    lines = {ln.get_label(): ln.get_data() for ln in fig.axes[0].get_lines()}
    assert list(lines) == ["baseline", "stripping"]  # the run without the key is left out
    assert np.allclose(lines["stripping"][1], [0.0, 0.125, 0.25])

    patterned = figures.runs_metric_over_training_figure(
        {
            "a": [
                {
                    "step": 1,
                    "liveness/mlp_post/layer_0/dead_ratio": 0.1,
                    "liveness/mlp_post/layer_1/dead_ratio": 0.2,
                }
            ]
        },
        "liveness/mlp_post/layer_*/dead_ratio",
    )
    labels = [ln.get_label() for ln in patterned.axes[0].get_lines()]
    assert labels == ["a: liveness/mlp_post/layer_0/dead_ratio", "a: liveness/mlp_post/layer_1/dead_ratio"]

    with pytest.raises(ValueError, match="val/ppl"):
        figures.runs_metric_over_training_figure(runs, "val/ppl")


def test_runs_dead_ratio_per_layer(tmp_path) -> None:
    runs = {
        "relu": synthetic(seed=1),
        "gelu": synthetic(seed=2),
        "attn_only": liveness({"attn_out": [layer(0, [1.0])]}),
    }
    runs["gelu"]["sites"]["mlp_post"][0] = layer(0, [0.0] * 8)
    assert_png(figures.plot_runs_dead_ratio_per_layer(runs, "mlp_post", tmp_path / "cmp.png"))
    fig = figures.runs_dead_ratio_per_layer_figure(runs, "mlp_post")
    lines = {ln.get_label(): ln.get_data() for ln in fig.axes[0].get_lines()}
    assert list(lines) == ["relu", "gelu"]
    assert lines["gelu"][1][0] == 1.0
    with pytest.raises(ValueError, match="mlp_pre"):
        figures.runs_dead_ratio_per_layer_figure({"attn_only": runs["attn_only"]}, "mlp_pre")


# ------------------------------------------------------------------------------ revival


def test_revived_per_layer(tmp_path) -> None:
    details = [
        {"layer": 1, "dead_units": 3, "revived_units": 1, "stripped_now": 12},
        {"layer": 0, "dead_units": 5, "revived_units": 0, "stripped_now": 20},
    ]
    assert_png(figures.plot_revived_per_layer(details, tmp_path / "rev.png"))
    fig = figures.revived_per_layer_figure(details)
    top, bottom = fig.axes
    heights = [p.get_height() for p in top.patches]
    assert heights == [5, 3, 0, 1]  # dead (layers 0, 1), then revived (layers 0, 1)
    assert [p.get_height() for p in bottom.patches] == [20, 12]
    assert "8 dead, 1 revived, 32 weights stripped" in fig.get_suptitle()


def test_revived_per_layer_edge_cases(tmp_path) -> None:
    redo = [{"layer": 0, "dead_units": 4, "revived_units": 2}]  # no stripped_now: one panel
    assert_png(figures.plot_revived_per_layer(redo, tmp_path / "redo.png"))
    assert len(figures.revived_per_layer_figure(redo).axes) == 1
    many = [
        {"layer": i, "dead_units": i % 5, "revived_units": i % 3, "stripped_now": 7 * i} for i in range(48)
    ]
    assert_png(figures.plot_revived_per_layer(many, tmp_path / "many.png"))
    with pytest.raises(ValueError, match="no revival"):
        figures.revived_per_layer_figure([])


def test_read_metrics_skips_broken_lines(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n\n[1, 2]\n{"step": 2, "a": NaN}\n{"step": 3')
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2] and math.isnan(rows[1]["a"])


def test_series_keeps_a_steps_last_number_and_drops_non_finite_unless_asked() -> None:
    rows = [
        {"step": 1, "a": 1.0},
        {"step": 2, "a": float("nan")},
        {"step": 3, "a": True},  # a bool is not a metric value
        {"step": "4", "a": 4.0},  # nor a step that is not a number
        {"step": 5, "a": 5.0},
        {"step": 5, "a": 6.0},  # a resumed run logs step 5 again: the last value counts
        {"step": 6, "b": 1.0},
    ]
    assert series(rows, "a") == [(1, 1.0), (5, 6.0)]
    drawn = series(rows, "a", finite=False)
    assert [s for s, _ in drawn] == [1, 2, 5] and math.isnan(drawn[1][1]) and drawn[2] == (5, 6.0)
    assert last(rows, "a") == 6.0 and last(rows, "c") is None


def test_atomic_write_replaces_whole_and_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    path = tmp_path / "status.json"
    assert atomic_write(path, "old\n") == path
    assert atomic_write(path, "new\n") == path and path.read_text() == "new\n"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("reviveformer.run_files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "never\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
