"""Figures of neuron liveness: firing-frequency heatmaps, dead ratios per layer and over training,
activation histograms, run comparisons and revival summaries.

Everything is drawn on a bare `matplotlib.figure.Figure` (the Agg canvas is chosen by `savefig` from the
file suffix), never through pyplot, so there is no global figure registry and no display is needed.
Each `*_figure` function builds and returns the Figure (for tests and for `wandb.Image`), and the
matching `plot_*` function saves it as a PNG, creating parent directories, and returns the path.

The contract: docs/design.md, the run directory's plots/ and the metric names.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, PercentFormatter

from reviveformer import metric_keys
from reviveformer.architectures import site_names, site_order

logger = logging.getLogger("reviveformer")

# a registered site's colour is its registry position in this palette (mlp_pre blue, mlp_post orange, attn_out green)
SITE_PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
FREQ_CMAP = "viridis"
LAYER_CMAP = "plasma"
DPI = 120
# Above this many layers, per-layer text labels and legends would overlap: switch to colour bars.
MAX_LABELLED_LAYERS = 16


# ---------------------------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | Path, svg: bool = False) -> Path:
    """Write `fig` as a PNG at `path` (parents created), with `svg` also as an SVG beside it (same stem),
    release its artists, and return the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    if svg:
        # Text kept as text (not glyph paths), so labels can be searched and edited; no date, so the same
        # figure writes the same file.
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    fig.clear()  # no pyplot registry to close from; clearing frees the artists at once
    return path


def _site_order(sites: Iterable[str]) -> list[str]:
    """The registry's site order first, then any other site alphabetically."""
    return site_order(sites)


def _site_color(site: str, i: int) -> Any:
    names = site_names()
    return SITE_PALETTE[names.index(site) % len(SITE_PALETTE)] if site in names else f"C{(i + 3) % 10}"


def _layer_colors(layers: Sequence[int]) -> dict[int, Any]:
    """Colour per layer along a sequential colormap, shallow (dark) to deep (bright)."""
    cmap = matplotlib.colormaps[LAYER_CMAP]
    hi = max(max(layers), 1) if layers else 1
    # Stop at 0.85: plasma's last stretch is a pale yellow that vanishes on white.
    return {layer: cmap(0.85 * layer / hi) for layer in layers}


def _layer_colorbar(fig: Figure, ax: Axes, layers: Sequence[int]) -> None:
    """A colour bar keyed to layer depth, used instead of a legend when there are many layers."""
    hi = max(max(layers), 1)
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list(
        "layers", [matplotlib.colormaps[LAYER_CMAP](x) for x in np.linspace(0, 0.85, 64)]
    )
    sm = matplotlib.cm.ScalarMappable(norm=Normalize(0, hi), cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.05)
    cb.set_label("layer")
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()


def _row_formatter(labels: Sequence[int]) -> FuncFormatter:
    """Tick formatter mapping a row index to its layer number (bound now: formatters run at draw time)."""

    def fmt(v: float, _pos: int | None) -> str:
        return str(labels[int(v)]) if 0 <= v < len(labels) and v == int(v) else ""

    return FuncFormatter(fmt)


def _layer_axis(ax: Axes, axis: str = "x") -> None:
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True, nbins=12))


def _ratio_axis(ax: Axes) -> None:
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, alpha=0.3)


def _sites_of(liveness: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Non-empty sites of a liveness.json dict, in design order, each layer list sorted by layer."""
    sites = liveness.get("sites") or {}
    out = {s: sorted(sites[s], key=lambda d: int(d["layer"])) for s in _site_order(sites) if sites[s]}
    if not out:
        raise ValueError("liveness has no sites with layers to plot (expected liveness['sites'][site] lists)")
    return out


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric over rows; a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if value is None or "step" not in row:
            continue
        try:
            by_step[int(row["step"])] = float(value)
        except (TypeError, ValueError):
            continue
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file; a line that is not a JSON object (a run killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    bad = 0
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if bad:
        logger.warning("%s: skipped %d line(s) that are not JSON objects", path, bad)
    return rows


def _rows(metrics_path_or_rows: str | Path | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    if isinstance(metrics_path_or_rows, (str, Path)):
        return read_metrics(metrics_path_or_rows)
    return metrics_path_or_rows


# ------------------------------------------------------------------------------ frequency heatmap


def frequency_matrix(layers: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(n_layer, units) firing frequencies of one site, rows in layer order, each row sorted descending.

    Layers of different widths are right-padded with NaN (drawn blank).
    """
    layers = sorted(layers, key=lambda d: int(d["layer"]))
    width = max((len(d["frequency"]) for d in layers), default=0)
    out = np.full((len(layers), width), np.nan)
    for i, d in enumerate(layers):
        freq = np.sort(np.asarray(d["frequency"], dtype=np.float64))[::-1]
        out[i, : len(freq)] = freq
    return out


def frequency_heatmap_figure(liveness: Mapping[str, Any], scale: str = "log") -> Figure:
    """Per site (columns), a heatmap with one row per layer of its units' firing frequencies, sorted
    descending, beside a bar per layer of its dead ratio.

    `scale`: "log" (default: separates rarely firing from never firing units; a unit that never fired is
    drawn in the colour bar's "under" colour) or "linear" (0..1).
    """
    if scale not in ("log", "linear"):
        raise ValueError(f"scale={scale!r} must be 'log' or 'linear'")
    sites = _sites_of(liveness)
    n_layer = max(len(v) for v in sites.values())
    tokens = int(liveness.get("tokens") or 0)
    dead_frequency = liveness.get("dead_frequency")

    if scale == "log":
        # One firing in the observed tokens is the smallest nonzero frequency; 1e-6 bounds huge audits
        # so that the scale keeps some resolution where units actually are.
        vmin = max(1.0 / tokens, 1e-6) if tokens > 0 else 1e-4
        under = "never fired" if tokens > 0 and vmin == 1.0 / tokens else f"< {vmin:g}"
        norm: Normalize = LogNorm(vmin=vmin, vmax=1.0, clip=False)
    else:
        norm, under = Normalize(vmin=0.0, vmax=1.0), ""
    cmap = matplotlib.colormaps[FREQ_CMAP].with_extremes(under="black", bad="white")

    height = min(2.8 + 0.28 * n_layer, 16.0)
    fig = Figure(figsize=(5.2 * len(sites), height), layout="constrained")
    # Per site: a wide heatmap and a narrow dead-ratio bar panel; a thin row below for colour bars.
    gs = fig.add_gridspec(
        2, 2 * len(sites), width_ratios=[5, 1] * len(sites), height_ratios=[height - 0.9, 0.16]
    )
    labelled = n_layer <= MAX_LABELLED_LAYERS
    for c, (site, layers) in enumerate(sites.items()):
        mat = frequency_matrix(layers)
        layer_ids = [int(d["layer"]) for d in layers]
        ax = fig.add_subplot(gs[0, 2 * c])
        plot_mat = mat
        if scale == "log":
            # log(0) would be masked and drawn blank; push zeros below vmin so they take the "under" colour.
            plot_mat = np.where(np.isnan(mat) | (mat > 0), mat, norm.vmin * 0.5)
        im = ax.imshow(
            plot_mat,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=norm,
            extent=(0, mat.shape[1], len(layers) - 0.5, -0.5),
        )
        # Rows are indices into layer_ids (layers need not be contiguous); label them with the layer.
        ax.yaxis.set_major_locator(
            FixedLocator(range(len(layers))) if labelled else MaxNLocator(integer=True, nbins=16)
        )
        ax.yaxis.set_major_formatter(_row_formatter(layer_ids))
        ax.set_ylabel("layer")
        ax.set_xlabel("unit rank (sorted by frequency)")
        ax.set_title(f"{site}  ({mat.shape[1]} units)", fontsize=11)

        bar_ax = fig.add_subplot(gs[0, 2 * c + 1], sharey=ax)
        ratios = [float(d.get("dead_ratio", np.nan)) for d in layers]
        bar_ax.barh(range(len(layers)), ratios, height=0.7, color="tab:red", alpha=0.8)
        bar_ax.set_xlim(0, 1)
        bar_ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bar_ax.set_xticks([0, 1])  # a middle tick collides with its neighbours in so narrow a panel
        bar_ax.tick_params(axis="y", labelleft=False)
        bar_ax.set_title("dead", fontsize=10)
        bar_ax.grid(True, axis="x", alpha=0.3)
        if labelled:
            fs = 8 if len(layers) <= 8 else 7
            for y, r in enumerate(ratios):
                if math.isfinite(r):
                    inside = r > 0.55  # past half the bar width, write it in white inside the bar
                    bar_ax.text(
                        r - 0.03 if inside else r + 0.03,
                        y,
                        f"{r:.0%}",
                        va="center",
                        ha="right" if inside else "left",
                        fontsize=fs,
                        color="white" if inside else "black",
                    )

        cax = fig.add_subplot(gs[1, 2 * c : 2 * c + 2])
        cb = fig.colorbar(
            im, cax=cax, orientation="horizontal", extend="min" if scale == "log" else "neither"
        )
        cb.set_label("firing frequency" + (f" (log; black: {under})" if scale == "log" else ""))
        # On a linear scale the dead threshold (~1e-3) sits on the axis end: mark it only on log.
        if scale == "log" and dead_frequency and dead_frequency >= norm.vmin:
            cb.ax.axvline(float(dead_frequency), color="red", lw=2.5)

    crit = liveness.get("criterion", "abs")
    thr = liveness.get("threshold")
    fires = "|a|" if crit == "abs" else "a"
    subtitle = [f"{tokens:,} tokens" if tokens else None]
    if thr is not None:
        subtitle.append(f"fires: {fires} > {thr:g}")
    if dead_frequency is not None:
        subtitle.append(f"dead: frequency < {dead_frequency:g}" + (" (red mark)" if scale == "log" else ""))
    fig.suptitle(
        "Firing frequency per unit\n" + ", ".join(s for s in subtitle if s), fontsize=12, fontweight="bold"
    )
    return fig


def plot_frequency_heatmap(liveness: Mapping[str, Any], path: str | Path, scale: str = "log") -> Path:
    """Save `frequency_heatmap_figure(liveness, scale)` as a PNG at `path`."""
    return save_figure(frequency_heatmap_figure(liveness, scale=scale), path)


# ------------------------------------------------------------------------------ activation histograms


def _centres(counts: np.ndarray, bins: np.ndarray) -> np.ndarray:
    if len(bins) == len(counts) + 1:
        return (bins[:-1] + bins[1:]) / 2
    if len(bins) == len(counts):
        return bins
    raise ValueError(f"histogram has {len(counts)} counts but {len(bins)} bin edges (expected counts + 1)")


def _zero_bin(bins: np.ndarray) -> tuple[int, float] | None:
    """(index, half-width) of the zero bin of log-spaced histogram edges (liveness.histogram_edges: a bin
    [-z, z] between mirrored log-spaced bins), or None for equal-width bins."""
    widths = np.diff(bins)
    if len(widths) < 3 or not np.all(widths > 0):
        return None
    mid = len(widths) // 2
    z = bins[mid + 1]
    if len(widths) % 2 == 0 or not math.isclose(-bins[mid], z) or widths.max() < 50 * widths.min():
        return None
    return mid, float(z)


def activation_histograms_figure(
    hists: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]], layers: Sequence[int] | None = None
) -> Figure:
    """Per site one panel, one line per layer: counts (log scale) against activation value.

    `hists[(site, layer)] = (counts, bin_edges)` (edges of length counts + 1, or bin centres). `layers`:
    the layers to draw (None: all present). Log-spaced bins around a zero bin (the monitor's) are drawn as
    steps on a symmetric-log axis, the zero bin shaded and its share of the values in the legend; equal bins
    as a line through the bin centres.
    """
    sites = _site_order({site for site, _ in hists})
    if not sites:
        raise ValueError("no histograms to plot")
    fig = Figure(figsize=(5.4 * len(sites), 4.2), layout="constrained")
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, site in zip(axes, sites, strict=True):
        present = sorted(layer for s, layer in hists if s == site)
        chosen = [layer for layer in present if layers is None or layer in set(layers)]
        colors = _layer_colors(chosen)
        zero_width = None
        for layer in chosen:
            counts, bins = (np.asarray(a, dtype=np.float64) for a in hists[(site, layer)])
            x = _centres(counts, bins)
            zero = _zero_bin(bins) if len(bins) == len(counts) + 1 else None
            shown = np.where(counts > 0, counts, np.nan)
            if zero is None:
                ax.plot(x, shown, color=colors[layer], lw=1.3, label=f"layer {layer}")
                continue
            mid, zero_width = zero
            share = counts[mid] / counts.sum() if counts.sum() else 0.0
            ax.stairs(
                shown,
                bins,
                color=colors[layer],
                lw=1.4,
                baseline=None,
                label=f"layer {layer}: {share:.0%} in zero bin",
            )
        if zero_width is not None:
            # linear within the zero bin, log outside: each log bin gets the same width on screen
            ax.set_xscale("symlog", linthresh=zero_width, linscale=0.25)
            lo, hi = ax.get_xlim()
            # 0 and whole decades from ten times the zero bin out: the zero bin's own edges would crowd 0
            decades = 10.0 ** np.arange(math.ceil(math.log10(zero_width)) + 1, math.floor(math.log10(hi)) + 1)
            ticks = [-d for d in decades[::-1] if -d >= lo] + [0.0] + list(decades)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.xaxis.set_minor_locator(FixedLocator([]))
            ax.axvspan(-zero_width, zero_width, color="0.5", alpha=0.2, lw=0)
            ax.set_xlabel(f"activation value (symmetric log; shaded: |a| <= {zero_width:.3g}, does not fire)")
        else:
            ax.set_xlabel("activation value")
        ax.set_yscale("log")
        ax.set_title(site)
        ax.set_ylabel("count (log)")
        ax.grid(True, alpha=0.3)
        if not chosen:
            ax.text(0.5, 0.5, "no chosen layer", ha="center", va="center", transform=ax.transAxes)
        elif len(chosen) <= 8:
            ax.legend(fontsize=8, frameon=False)
        else:
            _layer_colorbar(fig, ax, chosen)
    fig.suptitle("Activation histograms", fontweight="bold")
    return fig


def plot_activation_histograms(
    hists: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    layers: list[int] | None = None,
) -> Path:
    """Save `activation_histograms_figure(hists, layers)` as a PNG at `path`."""
    return save_figure(activation_histograms_figure(hists, layers=layers), path)


# ------------------------------------------------------------------------------ dead ratio per layer


def dead_ratio_per_layer_figure(liveness: Mapping[str, Any], title: str | None = None) -> Figure:
    """x = layer, y = dead ratio, one line per site."""
    sites = _sites_of(liveness)
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (site, layers) in enumerate(sites.items()):
        x = [int(d["layer"]) for d in layers]
        y = [float(d.get("dead_ratio", np.nan)) for d in layers]
        ax.plot(x, y, marker="o", ms=4, lw=1.8, color=_site_color(site, i), label=site)
    ax.set_xlabel("layer")
    ax.set_ylabel("dead ratio")
    _layer_axis(ax)
    _ratio_axis(ax)
    ax.legend(frameon=False)
    ax.set_title(title or "Dead units per layer", fontweight="bold")
    return fig


def plot_dead_ratio_per_layer(
    liveness: Mapping[str, Any], path: str | Path, title: str | None = None
) -> Path:
    """Save `dead_ratio_per_layer_figure(liveness, title)` as a PNG at `path`."""
    return save_figure(dead_ratio_per_layer_figure(liveness, title=title), path)


# ------------------------------------------------------------------------------ dead ratio over training


def dead_ratio_over_training_figure(
    metrics_path_or_rows: str | Path | Sequence[Mapping[str, Any]], title: str | None = None
) -> Figure:
    """Per site one panel: dead ratio over optimizer steps, one line per layer, the site's overall ratio
    (`liveness/<site>/dead_ratio`) in bold black. Reads metrics.jsonl rows (a path or the rows)."""
    rows = _rows(metrics_path_or_rows)
    per_layer: dict[str, set[int]] = {}
    overall: set[str] = set()
    for row in rows:
        for key in row:
            if (m := metric_keys.parse_dead_ratio_key(key)) is None:
                continue
            site, layer = m
            if layer is None:
                overall.add(site)
            else:
                per_layer.setdefault(site, set()).add(layer)
    sites = _site_order(set(per_layer) | overall)
    if not sites:
        raise ValueError("metrics hold no liveness/<site>/dead_ratio or liveness/<site>/layer_<i>/dead_ratio")
    fig = Figure(figsize=(5.0 * len(sites), 4.0), layout="constrained")
    axes = fig.subplots(1, len(sites), squeeze=False, sharey=True)[0]
    for ax, site in zip(axes, sites, strict=True):
        layers = sorted(per_layer.get(site, ()))
        colors = _layer_colors(layers)
        for layer in layers:
            steps, vals = _series(rows, metric_keys.dead_ratio_key(site, layer))
            ax.plot(steps, vals, color=colors[layer], lw=1.1, alpha=0.85, label=f"layer {layer}")
        if site in overall:
            steps, vals = _series(rows, metric_keys.dead_ratio_key(site))
            ax.plot(steps, vals, color="black", lw=2.6, label="all layers", zorder=5)
        for line in ax.get_lines():
            if len(line.get_xdata()) == 1:  # a single log point draws no line segment: show a marker
                line.set_marker("o")
        ax.set_title(site)
        ax.set_xlabel("step")
        _ratio_axis(ax)
        if len(layers) <= 8:
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.legend(handles=[h for h in ax.get_lines() if h.get_label() == "all layers"], frameon=False)
            _layer_colorbar(fig, ax, layers)
    axes[0].set_ylabel("dead ratio")
    fig.suptitle(title or "Dead units over training", fontweight="bold")
    return fig


def plot_dead_ratio_over_training(
    metrics_path_or_rows: str | Path | Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Save `dead_ratio_over_training_figure(metrics_path_or_rows, title)` as a PNG at `path`."""
    return save_figure(dead_ratio_over_training_figure(metrics_path_or_rows, title=title), path)


# ------------------------------------------------------------------------------ comparing runs


def runs_metric_over_training_figure(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key_pattern: str,
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """One line per run of a metric over steps. `key_pattern` is a metric name (`val/loss`) or an
    fnmatch pattern (`liveness/mlp_post/layer_*/dead_ratio`); a run with several matching keys gets one
    line per key in its colour, told apart by line style. Runs without a matching key are left out."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    drawn = 0
    for i, (name, rows) in enumerate(runs.items()):
        keys = sorted({k for row in rows for k in row if fnmatch.fnmatchcase(k, key_pattern)})
        for j, key in enumerate(keys):
            steps, vals = _series(rows, key)
            label = name if len(keys) == 1 else f"{name}: {key}"
            ax.plot(
                steps,
                vals,
                color=f"C{i % 10}",
                ls=styles[j % len(styles)],
                lw=1.8,
                label=label,
                marker="o" if len(steps) == 1 else None,
            )
            drawn += 1
    if not drawn:
        raise ValueError(f"no run has a metric matching {key_pattern!r} (runs: {', '.join(runs) or 'none'})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key_pattern)
    if "ratio" in key_pattern or "fraction" in key_pattern:
        _ratio_axis(ax)
    else:
        ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=8 if drawn > 6 else 9)
    ax.set_title(title or key_pattern, fontweight="bold")
    return fig


def plot_runs_metric_over_training(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key_pattern: str,
    path: str | Path,
    ylabel: str | None = None,
    title: str | None = None,
) -> Path:
    """Save `runs_metric_over_training_figure(runs, key_pattern, ylabel, title)` as a PNG at `path`."""
    return save_figure(runs_metric_over_training_figure(runs, key_pattern, ylabel=ylabel, title=title), path)


def runs_dead_ratio_per_layer_figure(
    runs: Mapping[str, Mapping[str, Any]], site: str, title: str | None = None
) -> Figure:
    """x = layer, y = dead ratio at `site`, one line per run (or per activation in a sweep).
    Runs whose liveness lacks the site are left out."""
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, liveness) in enumerate(runs.items()):
        layers = sorted((liveness.get("sites") or {}).get(site) or [], key=lambda d: int(d["layer"]))
        if not layers:
            continue
        x = [int(d["layer"]) for d in layers]
        y = [float(d.get("dead_ratio", np.nan)) for d in layers]
        ax.plot(x, y, marker="o", ms=4, lw=1.8, color=f"C{i % 10}", label=name)
        drawn += 1
    if not drawn:
        raise ValueError(f"no run has liveness for site {site!r} (runs: {', '.join(runs) or 'none'})")
    ax.set_xlabel("layer")
    ax.set_ylabel("dead ratio")
    _layer_axis(ax)
    _ratio_axis(ax)
    ax.legend(frameon=False, fontsize=8 if drawn > 6 else 9)
    ax.set_title(title or f"Dead units per layer: {site}", fontweight="bold")
    return fig


def plot_runs_dead_ratio_per_layer(
    runs: Mapping[str, Mapping[str, Any]], site: str, path: str | Path, title: str | None = None
) -> Path:
    """Save `runs_dead_ratio_per_layer_figure(runs, site, title)` as a PNG at `path`."""
    return save_figure(runs_dead_ratio_per_layer_figure(runs, site, title=title), path)


def seed_band(runs: Sequence[Sequence[Mapping[str, Any]]], key: str) -> dict[str, np.ndarray]:
    """Mean and spread over seeds of one metric: at each step logged by any run, the mean, the sample standard
    deviation (NaN where fewer than 2 runs have the step) and n, the number of runs with a value there."""
    return _band([dict(zip(*(a.tolist() for a in _series(rows, key)), strict=True)) for rows in runs])


def _band(per_run: Sequence[Mapping[int, float]]) -> dict[str, np.ndarray]:
    """`seed_band` of series already read: one {x: value} per run ("step" holds the x values)."""
    steps = sorted({s for series in per_run for s in series})
    mean, sd, n = [], [], []
    for step in steps:
        values = [series[step] for series in per_run if step in series and math.isfinite(series[step])]
        n.append(len(values))
        mean.append(float(np.mean(values)) if values else np.nan)
        sd.append(float(np.std(values, ddof=1)) if len(values) > 1 else np.nan)
    return {
        "step": np.array(steps, dtype=np.int64),
        "mean": np.array(mean),
        "sd": np.array(sd),
        "n": np.array(n, dtype=np.int64),
    }


def groups_band_over_training_figure(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    key: str,
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """One line per arm (the mean over its seeds' runs) with a band of mean +- one standard deviation over the
    seeds; `groups` maps an arm's label to the metric rows of each of its runs. Arms without the key are left
    out."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (label, runs) in enumerate(groups.items()):
        band = seed_band(runs, key)
        keep = band["n"] > 0
        if not keep.any():
            continue
        x, m, sd = band["step"][keep], band["mean"][keep], band["sd"][keep]
        colour = f"C{i % 10}"
        ax.plot(
            x, m, color=colour, lw=1.8, label=f"{label} (n={len(runs)})", marker="o" if len(x) == 1 else None
        )
        spread = np.isfinite(sd)
        if spread.any():
            ax.fill_between(x[spread], (m - sd)[spread], (m + sd)[spread], color=colour, alpha=0.2, lw=0)
        drawn += 1
    if not drawn:
        raise ValueError(f"no arm has the metric {key!r} (arms: {', '.join(groups) or 'none'})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key)
    if "ratio" in key or "fraction" in key:
        _ratio_axis(ax)
    else:
        ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=8 if drawn > 6 else 9)
    ax.set_title(title or key, fontweight="bold")
    ax.text(
        0.99,
        0.01,
        "line: mean over seeds; band: +- 1 sd",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        alpha=0.7,
    )
    return fig


def plot_groups_band_over_training(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    key: str,
    path: str | Path,
    ylabel: str | None = None,
    title: str | None = None,
) -> Path:
    """Save `groups_band_over_training_figure(groups, key, ylabel, title)` as a PNG at `path`."""
    return save_figure(groups_band_over_training_figure(groups, key, ylabel=ylabel, title=title), path)


# ------------------------------------------------------------------------------ task sequences


def task_ends(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Task index -> the finite numbers of the row logged at that task's end (the row holding `task/index`),
    by task; a task logged twice (a resumed run logs its end again) keeps its last row."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        index = row.get(metric_keys.TASK_INDEX)
        if isinstance(index, bool) or not isinstance(index, (int, float)) or not math.isfinite(index):
            continue
        out[int(index)] = {
            k: float(v)
            for k, v in row.items()
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        }
    return dict(sorted(out.items()))


def last_half(n_tasks: int) -> range:
    """The tasks a plasticity number averages over: the last half, k >= n_tasks // 2 (of 5 tasks: 2, 3, 4)."""
    return range(n_tasks // 2, n_tasks)


def _task_series(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    return {k: row[key] for k, row in task_ends(rows).items() if key in row}


def _task_site(runs: Iterable[Sequence[Mapping[str, Any]]], site: str) -> str | None:
    """`site` when some task end logged its dead ratio, else the first site (registry order) that did."""
    found = {
        m[0]
        for rows in runs
        for row in task_ends(rows).values()
        for k in row
        if (m := metric_keys.parse_dead_ratio_key(k)) is not None and m[1] is None
    }
    return site if site in found else next(iter(_site_order(found)), None)


def plasticity_figure(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    site: str = "mlp_post",
    title: str | None = None,
) -> Figure:
    """The plasticity figure of a task sequence: against the task index, the end-of-task training loss (mean
    of the task's last log window), the task's held-out loss at its end, and the dead ratio of `site` (or of
    the first site the task ends logged, when they lack it). One line per arm, the mean over its seeds' runs,
    with a band of mean +- one sample standard deviation; `groups` maps an arm's label to the metric rows of
    each of its runs (with one run per arm, e.g. a run's own figure: plain lines labelled as given). The last half of the tasks (what the plasticity table averages) is shaded."""
    site = _task_site((rows for runs in groups.values() for rows in runs), site)
    panels = [
        (metric_keys.TASK_TRAIN_LOSS, "end-of-task training loss", "Training loss (last log window)"),
        (metric_keys.TASK_VAL_LOSS, "held-out loss of the task", "Held-out loss at the task's end"),
    ]
    if site is not None:
        panels.append((metric_keys.dead_ratio_key(site), "dead ratio", f"Dead units: {site}"))
    bands = {
        key: {label: _band([_task_series(rows, key) for rows in runs]) for label, runs in groups.items()}
        for key, _, _ in panels
    }
    panels = [p for p in panels if any(len(b["step"]) for b in bands[p[0]].values())]
    if not panels:
        raise ValueError(
            f"no run has task ends ({metric_keys.TASK_INDEX} rows with {metric_keys.TASK_TRAIN_LOSS} or "
            f"{metric_keys.TASK_VAL_LOSS}; arms: {', '.join(groups) or 'none'})"
        )
    single = all(len(runs) == 1 for runs in groups.values())  # one run per line: no mean, no band to explain
    n_tasks = 1 + max(int(b["step"].max()) for p in panels for b in bands[p[0]].values() if len(b["step"]))
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, ylabel, panel_title) in zip(axes, panels, strict=True):
        half = last_half(n_tasks)
        ax.axvspan(half.start - 0.5, n_tasks - 0.5, color="0.5", alpha=0.1, lw=0)
        for i, (label, band) in enumerate(bands[key].items()):
            keep = band["n"] > 0
            if not keep.any():
                continue
            x, m, sd = band["step"][keep], band["mean"][keep], band["sd"][keep]
            colour = f"C{i % 10}"
            name = label if single else f"{label} (n={len(groups[label])})"
            ax.plot(x, m, color=colour, lw=1.8, marker="o", ms=3.5, label=name)
            spread = np.isfinite(sd)
            if spread.any():
                ax.fill_between(x[spread], (m - sd)[spread], (m + sd)[spread], color=colour, alpha=0.2, lw=0)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlim(-0.5, n_tasks - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
        if "ratio" in key:
            _ratio_axis(ax)
        else:
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    # One legend for all panels, below them: the arms are the same in each.
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False, fontsize=9
    )
    fig.suptitle(
        (title or "Plasticity over the task sequence")
        + ("\n" if single else "\nline: mean over seeds; band: +- 1 sd; ")
        + "shaded: the last half of the tasks",
        fontweight="bold",
    )
    return fig


def plot_plasticity(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | Path,
    site: str = "mlp_post",
    title: str | None = None,
) -> Path:
    """Save `plasticity_figure(groups, site, title)` as a PNG at `path` and as an SVG beside it."""
    return save_figure(plasticity_figure(groups, site=site, title=title), path, svg=True)


# ------------------------------------------------------------------------------ revival


def revived_per_layer_figure(details: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Grouped bars per layer of one revival pass: dead units and revived units (top), and weights
    stripped now (bottom, its own scale: weights, not units; drawn only when the details have it).

    Each detail: `{"layer", "dead_units", "revived_units", "stripped_now"}`; a missing count is 0.
    """
    if not details:
        raise ValueError("no revival details to plot")
    details = sorted(details, key=lambda d: int(d["layer"]))
    layers = np.array([int(d["layer"]) for d in details])
    dead = np.array([int(d.get("dead_units", 0)) for d in details])
    revived = np.array([int(d.get("revived_units", 0)) for d in details])
    has_stripped = any("stripped_now" in d for d in details)
    stripped = np.array([int(d.get("stripped_now", 0)) for d in details])

    width = min(max(5.5, 0.35 * len(layers) + 2.5), 18.0)
    fig = Figure(figsize=(width, 5.5 if has_stripped else 3.8), layout="constrained")
    if has_stripped:
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    else:
        ax, ax2 = fig.add_subplot(), None
    pos = layers.astype(np.float64)  # bars at the layer numbers, so sparse layer lists keep their spacing
    w = 0.4
    b1 = ax.bar(pos - w / 2, dead, w, label="dead units", color="tab:red", alpha=0.85)
    b2 = ax.bar(pos + w / 2, revived, w, label="revived units", color="tab:green", alpha=0.85)
    labelled = len(layers) <= MAX_LABELLED_LAYERS
    if labelled:
        ax.bar_label(b1, fontsize=7, padding=1)
        ax.bar_label(b2, fontsize=7, padding=1)
    ax.set_ylabel("units")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    # Above the panel, so it never hides a tall bar.
    ax.legend(frameon=False, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)
    last = ax
    if ax2 is not None:
        b3 = ax2.bar(pos, stripped, 0.6, color="tab:purple", alpha=0.85, label="weights stripped now")
        if labelled:
            ax2.bar_label(b3, fontsize=7, padding=1)
        ax2.set_ylabel("weights stripped")
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.margins(y=0.15)
        ax2.grid(True, axis="y", alpha=0.3)
        last = ax2
    last.xaxis.set_major_locator(FixedLocator(layers) if labelled else MaxNLocator(integer=True, nbins=16))
    last.set_xlabel("layer")
    total = f"{dead.sum()} dead, {revived.sum()} revived" + (
        f", {stripped.sum()} weights stripped" if has_stripped else ""
    )
    fig.suptitle((title or "Revival per layer") + f"\n{total}", fontweight="bold")
    return fig


def plot_revived_per_layer(
    details: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Save `revived_per_layer_figure(details, title)` as a PNG at `path`."""
    return save_figure(revived_per_layer_figure(details, title=title), path)
