"""The figures that compare runs: a metric over training with a line per run, the dead ratio per layer with a
line per run, and an arm's mean over its seeds with a band of +- one standard deviation.

Each `*_figure` function builds and returns the Figure, and the matching `plot_*` function saves it as a PNG
and returns the path (`compare.write_figures` names the files).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from reviveformer.figures.common import arrays, layer_axis, ratio_axis, save_figure
from reviveformer.stats import seed_band


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
            steps, vals = arrays(rows, key)
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
        ratio_axis(ax)
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
    layer_axis(ax)
    ratio_axis(ax)
    ax.legend(frameon=False, fontsize=8 if drawn > 6 else 9)
    ax.set_title(title or f"Dead units per layer: {site}", fontweight="bold")
    return fig


def plot_runs_dead_ratio_per_layer(
    runs: Mapping[str, Mapping[str, Any]], site: str, path: str | Path, title: str | None = None
) -> Path:
    """Save `runs_dead_ratio_per_layer_figure(runs, site, title)` as a PNG at `path`."""
    return save_figure(runs_dead_ratio_per_layer_figure(runs, site, title=title), path)


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
        ratio_axis(ax)
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
