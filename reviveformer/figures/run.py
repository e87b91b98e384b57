"""The figures of one run: firing-frequency heatmaps, activation histograms, dead ratios per layer and over
training, a revival per layer, and the loss curves of its report page.

Each `*_figure` function builds and returns the Figure (for tests, the report page and `wandb.Image`), and the
matching `plot_*` function saves it as a PNG, creating parent directories, and returns the path. The contract:
docs/design.md, the run directory's plots/ and the metric names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, PercentFormatter

from reviveformer import metric_keys
from reviveformer.architectures import site_order
from reviveformer.figures.common import (
    FREQ_CMAP,
    MAX_LABELLED_LAYERS,
    arrays,
    layer_axis,
    layer_colorbar,
    layer_colors,
    liveness_sites,
    ratio_axis,
    row_formatter,
    rows_of,
    save_figure,
    site_color,
)
from reviveformer.run_files import series

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
    sites = liveness_sites(liveness)
    n_layer = max(len(v) for v in sites.values())
    norm, under = _frequency_norm(int(liveness.get("tokens") or 0), scale)
    height = min(2.8 + 0.28 * n_layer, 16.0)
    fig = Figure(figsize=(5.2 * len(sites), height), layout="constrained")
    # Per site: a wide heatmap and a narrow dead-ratio bar panel; a thin row below for colour bars.
    gs = fig.add_gridspec(
        2, 2 * len(sites), width_ratios=[5, 1] * len(sites), height_ratios=[height - 0.9, 0.16]
    )
    labelled = n_layer <= MAX_LABELLED_LAYERS
    for c, (site, layers) in enumerate(sites.items()):
        ax = fig.add_subplot(gs[0, 2 * c])
        im = _frequency_panel(ax, site, layers, norm, scale, labelled)
        bar_ax = fig.add_subplot(gs[0, 2 * c + 1], sharey=ax)
        _dead_bars(bar_ax, [float(d.get("dead_ratio", np.nan)) for d in layers], labelled)
        cax = fig.add_subplot(gs[1, 2 * c : 2 * c + 2])
        cb = fig.colorbar(
            im, cax=cax, orientation="horizontal", extend="min" if scale == "log" else "neither"
        )
        cb.set_label("firing frequency" + (f" (log; black: {under})" if scale == "log" else ""))
        # On a linear scale the dead threshold (~1e-3) sits on the axis end: mark it only on log.
        dead_frequency = liveness.get("dead_frequency")
        if scale == "log" and dead_frequency and dead_frequency >= norm.vmin:
            cb.ax.axvline(float(dead_frequency), color="red", lw=2.5)
    fig.suptitle(_frequency_title(liveness, scale), fontsize=12, fontweight="bold")
    return fig


def _frequency_norm(tokens: int, scale: str) -> tuple[Normalize, str]:
    """The colour scale of the heatmap and what its "under" colour stands for (log scale only)."""
    if scale == "log":
        # One firing in the observed tokens is the smallest nonzero frequency; 1e-6 bounds huge audits
        # so that the scale keeps some resolution where units actually are.
        vmin = max(1.0 / tokens, 1e-6) if tokens > 0 else 1e-4
        under = "never fired" if tokens > 0 and vmin == 1.0 / tokens else f"< {vmin:g}"
        return LogNorm(vmin=vmin, vmax=1.0, clip=False), under
    return Normalize(vmin=0.0, vmax=1.0), ""


def _frequency_panel(
    ax, site: str, layers: Sequence[Mapping[str, Any]], norm: Normalize, scale: str, labelled: bool
):
    """One site's heatmap: a row per layer of its units' frequencies, sorted descending; returns the image."""
    cmap = matplotlib.colormaps[FREQ_CMAP].with_extremes(under="black", bad="white")
    mat = frequency_matrix(layers)
    layer_ids = [int(d["layer"]) for d in layers]
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
    ax.yaxis.set_major_formatter(row_formatter(layer_ids))
    ax.set_ylabel("layer")
    ax.set_xlabel("unit rank (sorted by frequency)")
    ax.set_title(f"{site}  ({mat.shape[1]} units)", fontsize=11)
    return im


def _dead_bars(bar_ax, ratios: Sequence[float], labelled: bool) -> None:
    """The narrow panel beside a heatmap: a bar per layer of its dead ratio, labelled when few layers."""
    bar_ax.barh(range(len(ratios)), ratios, height=0.7, color="tab:red", alpha=0.8)
    bar_ax.set_xlim(0, 1)
    bar_ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    bar_ax.set_xticks([0, 1])  # a middle tick collides with its neighbours in so narrow a panel
    bar_ax.tick_params(axis="y", labelleft=False)
    bar_ax.set_title("dead", fontsize=10)
    bar_ax.grid(True, axis="x", alpha=0.3)
    if not labelled:
        return
    fs = 8 if len(ratios) <= 8 else 7
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


def _frequency_title(liveness: Mapping[str, Any], scale: str) -> str:
    tokens = int(liveness.get("tokens") or 0)
    dead_frequency = liveness.get("dead_frequency")
    crit = liveness.get("criterion", "abs")
    thr = liveness.get("threshold")
    fires = "|a|" if crit == "abs" else "a"
    subtitle = [f"{tokens:,} tokens" if tokens else None]
    if thr is not None:
        subtitle.append(f"fires: {fires} > {thr:g}")
    if dead_frequency is not None:
        subtitle.append(f"dead: frequency < {dead_frequency:g}" + (" (red mark)" if scale == "log" else ""))
    return "Firing frequency per unit\n" + ", ".join(s for s in subtitle if s)


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
    sites = site_order({site for site, _ in hists})
    if not sites:
        raise ValueError("no histograms to plot")
    fig = Figure(figsize=(5.4 * len(sites), 4.2), layout="constrained")
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, site in zip(axes, sites, strict=True):
        present = sorted(layer for s, layer in hists if s == site)
        chosen = [layer for layer in present if layers is None or layer in set(layers)]
        zero_width = _histogram_lines(ax, hists, site, chosen)
        if zero_width is not None:
            _zero_bin_axis(ax, zero_width)
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
            layer_colorbar(fig, ax, chosen)
    fig.suptitle("Activation histograms", fontweight="bold")
    return fig


def _histogram_lines(ax, hists, site: str, chosen: Sequence[int]) -> float | None:
    """One line per chosen layer of `site`; returns the half-width of their zero bin (None: equal bins)."""
    colors = layer_colors(chosen)
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
    return zero_width


def _zero_bin_axis(ax, zero_width: float) -> None:
    """A symmetric-log x axis: linear within the zero bin (shaded), log outside, so each log bin gets the
    same width on screen."""
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
    sites = liveness_sites(liveness)
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (site, layers) in enumerate(sites.items()):
        x = [int(d["layer"]) for d in layers]
        y = [float(d.get("dead_ratio", np.nan)) for d in layers]
        ax.plot(x, y, marker="o", ms=4, lw=1.8, color=site_color(site, i), label=site)
    ax.set_xlabel("layer")
    ax.set_ylabel("dead ratio")
    layer_axis(ax)
    ratio_axis(ax)
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
    rows = rows_of(metrics_path_or_rows)
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
    sites = site_order(set(per_layer) | overall)
    if not sites:
        raise ValueError("metrics hold no liveness/<site>/dead_ratio or liveness/<site>/layer_<i>/dead_ratio")
    fig = Figure(figsize=(5.0 * len(sites), 4.0), layout="constrained")
    axes = fig.subplots(1, len(sites), squeeze=False, sharey=True)[0]
    for ax, site in zip(axes, sites, strict=True):
        layers = sorted(per_layer.get(site, ()))
        colors = layer_colors(layers)
        for layer in layers:
            steps, vals = arrays(rows, metric_keys.dead_ratio_key(site, layer))
            ax.plot(steps, vals, color=colors[layer], lw=1.1, alpha=0.85, label=f"layer {layer}")
        if site in overall:
            steps, vals = arrays(rows, metric_keys.dead_ratio_key(site))
            ax.plot(steps, vals, color="black", lw=2.6, label="all layers", zorder=5)
        for line in ax.get_lines():
            if len(line.get_xdata()) == 1:  # a single log point draws no line segment: show a marker
                line.set_marker("o")
        ax.set_title(site)
        ax.set_xlabel("step")
        ratio_axis(ax)
        if len(layers) <= 8:
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.legend(handles=[h for h in ax.get_lines() if h.get_label() == "all layers"], frameon=False)
            layer_colorbar(fig, ax, layers)
    axes[0].set_ylabel("dead ratio")
    fig.suptitle(title or "Dead units over training", fontweight="bold")
    return fig


def plot_dead_ratio_over_training(
    metrics_path_or_rows: str | Path | Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """Save `dead_ratio_over_training_figure(metrics_path_or_rows, title)` as a PNG at `path`."""
    return save_figure(dead_ratio_over_training_figure(metrics_path_or_rows, title=title), path)


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


# ------------------------------------------------------------------------------ loss


def loss_curves_figure(rows: Sequence[Mapping[str, Any]], title: str = "Loss") -> Figure:
    """Training loss (per log window) and validation loss over optimizer steps."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for key, label, color in (
        (metric_keys.TRAIN_LOSS, "training", "tab:blue"),
        (metric_keys.VAL_LOSS, "validation", "tab:orange"),
    ):
        found = series(rows, key)
        if found:
            steps, vals = zip(*found, strict=True)
            ax.plot(
                steps, vals, color=color, lw=1.8, label=label, marker="o" if len(steps) < 12 else None, ms=4
            )
            drawn += 1
    if not drawn:
        raise ValueError("metrics hold no train/loss or val/loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(title, fontweight="bold")
    return fig


def mark_revivals(fig: Figure, steps: Sequence[int]) -> Figure:
    """Dotted vertical lines at the revival steps on every plot panel of `fig` (colour bars left alone)."""
    for ax in fig.axes:
        if ax.get_label() != "<colorbar>":
            for step in steps:
                ax.axvline(step, color="tab:red", ls=":", lw=1.2, alpha=0.8, zorder=1)
    return fig
