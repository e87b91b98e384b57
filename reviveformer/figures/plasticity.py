"""The plasticity figure of a task sequence: against the task index, the end-of-task training loss, the task's
held-out loss and a dead ratio, one line per arm (the mean over its seeds, with a band of +- one sd).

The contract: docs/design.md, "Task sequences" and compare's plasticity section.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reviveformer import metric_keys
from reviveformer.architectures import site_order
from reviveformer.figures.common import ratio_axis, save_figure
from reviveformer.run_files import task_ends
from reviveformer.stats import band, last_half


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
    return site if site in found else next(iter(site_order(found)), None)


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
    panels, bands = _task_bands(groups, site)
    single = all(len(runs) == 1 for runs in groups.values())  # one run per line: no mean, no band to explain
    n_tasks = 1 + max(int(b["step"].max()) for p in panels for b in bands[p[0]].values() if len(b["step"]))
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, ylabel, panel_title) in zip(axes, panels, strict=True):
        sizes = {label: None if single else len(groups[label]) for label in groups}
        _task_panel(ax, bands[key], sizes, n_tasks)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=11)
        ax.set_xlim(-0.5, n_tasks - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
        if "ratio" in key:
            ratio_axis(ax)
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


def _task_bands(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], site: str
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, dict[str, np.ndarray]]]]:
    """The panels (metric key, y label, title) that some arm has task ends for, and per key and arm the band
    over the arm's runs by task index."""
    site = _task_site((rows for runs in groups.values() for rows in runs), site)
    panels = [
        (metric_keys.TASK_TRAIN_LOSS, "end-of-task training loss", "Training loss (last log window)"),
        (metric_keys.TASK_VAL_LOSS, "held-out loss of the task", "Held-out loss at the task's end"),
    ]
    if site is not None:
        panels.append((metric_keys.dead_ratio_key(site), "dead ratio", f"Dead units: {site}"))
    bands = {
        key: {label: band([_task_series(rows, key) for rows in runs]) for label, runs in groups.items()}
        for key, _, _ in panels
    }
    panels = [p for p in panels if any(len(b["step"]) for b in bands[p[0]].values())]
    if not panels:
        raise ValueError(
            f"no run has task ends ({metric_keys.TASK_INDEX} rows with {metric_keys.TASK_TRAIN_LOSS} or "
            f"{metric_keys.TASK_VAL_LOSS}; arms: {', '.join(groups) or 'none'})"
        )
    return panels, bands


def _task_panel(
    ax, bands: Mapping[str, Mapping[str, np.ndarray]], sizes: Mapping[str, int | None], n_tasks: int
):
    """One metric against the task: the last half shaded, a line per arm with its band (`sizes`: the arm's
    number of runs for its label, None for a plain label)."""
    half = last_half(n_tasks)
    ax.axvspan(half.start - 0.5, n_tasks - 0.5, color="0.5", alpha=0.1, lw=0)
    for i, (label, arm) in enumerate(bands.items()):
        keep = arm["n"] > 0
        if not keep.any():
            continue
        x, m, sd = arm["step"][keep], arm["mean"][keep], arm["sd"][keep]
        colour = f"C{i % 10}"
        name = label if sizes[label] is None else f"{label} (n={sizes[label]})"
        ax.plot(x, m, color=colour, lw=1.8, marker="o", ms=3.5, label=name)
        spread = np.isfinite(sd)
        if spread.any():
            ax.fill_between(x[spread], (m - sd)[spread], (m + sd)[spread], color=colour, alpha=0.2, lw=0)


def plot_plasticity(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | Path,
    site: str = "mlp_post",
    title: str | None = None,
) -> Path:
    """Save `plasticity_figure(groups, site, title)` as a PNG at `path` and as an SVG beside it."""
    return save_figure(plasticity_figure(groups, site=site, title=title), path, svg=True)
