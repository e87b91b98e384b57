"""What `compare` writes: compare.md, compare.json, seeds.json and the figures (one line per run, a band per arm)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reviveformer import metric_keys
from reviveformer.compare.runs import RunData, _number, load_runs
from reviveformer.compare.seeds import SeedGroup, group_seeds, plasticity, seed_runs, seed_summary
from reviveformer.compare.summary import _site_order, sites_of, summarise_all
from reviveformer.compare.tables import (
    MISSING,
    _markdown,
    _text,
    difference_cells,
    group_cells,
    plasticity_arm_cells,
    plasticity_difference_cells,
    plasticity_gap_cells,
    render_markdown,
    render_text,
)
from reviveformer.errors import UserError
from reviveformer.figures import (
    plot_groups_band_over_training,
    plot_plasticity,
    plot_runs_dead_ratio_per_layer,
    plot_runs_metric_over_training,
)
from reviveformer.paths import check_out_dir
from reviveformer.stats import PAIRED_METHOD, WELCH_METHOD


def _has_key(runs: Iterable[RunData], key: str) -> bool:
    return any(_number(row.get(key)) is not None for run in runs for row in run.metrics)


def _finite_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}


def write_figures(runs: Sequence[RunData], out_dir: Path) -> dict[str, Path]:
    """One PNG per comparison figure that some run has data for; returns {figure name: path}."""
    # Non-finite values (a NaN loss) dropped: a NaN point would cut the line and hide the points after it.
    metrics = {run.name: [_finite_row(row) for row in run.metrics] for run in runs}
    figures: dict[str, Path] = {}
    if _has_key(runs, metric_keys.VAL_LOSS):
        figures["validation loss"] = plot_runs_metric_over_training(
            metrics,
            metric_keys.VAL_LOSS,
            out_dir / "val_loss.png",
            ylabel="validation loss",
            title="Validation loss",
        )
    sites = _site_order({s for run in runs for s in sites_of(run)})
    for site in sites:
        if _has_key(runs, metric_keys.dead_ratio_key(site)):
            figures[f"dead ratio over training: {site}"] = plot_runs_metric_over_training(
                metrics,
                metric_keys.dead_ratio_key(site),
                out_dir / f"dead_ratio_over_training_{site}.png",
                ylabel="dead ratio",
                title=f"Dead units over training: {site}",
            )
    for site in sites:
        liveness = {
            run.name: run.liveness
            for run in runs
            if run.liveness and ((run.liveness.get("sites") or {}).get(site))
        }
        if liveness:
            figures[f"dead ratio per layer at the end: {site}"] = plot_runs_dead_ratio_per_layer(
                liveness,
                site,
                out_dir / f"dead_ratio_per_layer_{site}.png",
                title=f"Dead units per layer at the end: {site}",
            )
    return figures


def write_band_figures(groups: Sequence[SeedGroup], out_dir: Path) -> dict[str, Path]:
    """Per arm, a line (mean over its seeds) with a band (+- 1 sd) over training: validation loss and each
    site's dead ratio. Returns {figure name: path}."""
    runs = [r for g in groups for r in g.runs]
    metrics = {g.label: [[_finite_row(row) for row in r.metrics] for r in g.runs] for g in groups}
    figures: dict[str, Path] = {}
    if _has_key(runs, metric_keys.VAL_LOSS):
        figures["validation loss over seeds"] = plot_groups_band_over_training(
            metrics,
            metric_keys.VAL_LOSS,
            out_dir / "val_loss_seeds.png",
            ylabel="validation loss",
            title="Validation loss (mean and sd over seeds)",
        )
    for site in _site_order({s for run in runs for s in sites_of(run)}):
        if _has_key(runs, metric_keys.dead_ratio_key(site)):
            figures[f"dead ratio over training over seeds: {site}"] = plot_groups_band_over_training(
                metrics,
                metric_keys.dead_ratio_key(site),
                out_dir / f"dead_ratio_over_training_{site}_seeds.png",
                ylabel="dead ratio",
                title=f"Dead units over training: {site} (mean and sd over seeds)",
            )
    return figures


def write_plasticity_figure(groups: Sequence[SeedGroup], out_dir: Path) -> dict[str, Path]:
    """The plasticity figure of the arms whose runs have task ends (`plasticity.png` and `.svg`): end-of-task
    training and held-out loss and the mlp_post dead ratio against the task index, one line per arm with a band
    of +- 1 sd over its seeds. Returns {figure name: PNG path}."""
    tasked = {
        g.label: [[_finite_row(row) for row in r.metrics] for r in g.runs]
        for g in groups
        if any(_number(row.get(metric_keys.TASK_INDEX)) is not None for r in g.runs for row in r.metrics)
    }
    if not tasked:
        return {}
    return {
        "plasticity: end-of-task loss and dead ratio against the task": plot_plasticity(
            tasked, out_dir / "plasticity.png"
        )
    }


def plasticity_note(p: Mapping[str, Any]) -> str:
    """What the plasticity tables hold and how their numbers were computed."""
    pct = f"{p['confidence']:.0%}"
    return (
        f"Metric: {p['metric']}; per arm the mean ± the sample standard deviation over its seeds. Differences "
        "are arm minus the reference arm of the same settings but the revival method (trains on: "
        "revival.method none; fresh start: fresh_start), paired by seed, with a "
        f"{pct} {p['method']}. The plasticity gap is trains on minus fresh start: what a method could "
        "recover at most. Recovered fraction of the gap: mean(trains on - arm) / mean(trains on - fresh start) "
        f"over the seeds all three ran (100%: as a fresh start; 0%: as training on), with a {pct} "
        f"{p['recovered_method']}, a = trains on - arm and b = trains on - fresh start; `unbounded` where the gap itself is not told apart from 0 at that level. "
        f"`{MISSING}`: no such reference arm, or fewer than 2 seeds for an interval."
    )


def _plasticity_markdown(p: Mapping[str, Any]) -> list[str]:
    lines = ["## Plasticity over the task sequence", "", _markdown(*plasticity_arm_cells(p)), ""]
    if p["gaps"]:
        lines += ["### Plasticity gap (trains on - fresh start)", "", _markdown(*plasticity_gap_cells(p)), ""]
    for metric, name in (("train", "end-of-task training loss"), ("val", "held-out loss")):
        lines += [f"### Differences in {name}", "", _markdown(*plasticity_difference_cells(p, metric)), ""]
    return [*lines, plasticity_note(p), ""]


def _plasticity_text(p: Mapping[str, Any]) -> str:
    text = "\n\nplasticity, mean end-of-task loss over the last half of the tasks (mean ± sd):\n" + _text(
        *plasticity_arm_cells(p)
    )
    if p["gaps"]:
        text += "\n\nplasticity gap (trains on - fresh start, paired t intervals):\n" + _text(
            *plasticity_gap_cells(p)
        )
    for metric, name in (("train", "end-of-task training loss"), ("val", "held-out loss")):
        text += f"\n\n{name}, paired differences and recovered fraction of the gap:\n" + _text(
            *plasticity_difference_cells(p, metric)
        )
    return text


def incomplete_note(runs: Sequence[RunData], seeds: Mapping[str, Any] | None) -> str:
    """The sentence under the table that names the runs that did not finish and says how they were counted."""
    names = ", ".join(
        f"{run.name} ({run.status.short() if run.status else 'unknown'})" for run in runs if not run.complete
    )
    counted = (
        "counted in the arms over seeds (--include-incomplete)"
        if seeds and seeds["incomplete"]["included"]
        else "left out of the arms over seeds (--include-incomplete counts them)"
    )
    return (
        f"**Incomplete runs** (complete: NO): {names}. Their numbers are of where they stopped, not of their "
        f"planned end; {counted}."
    )


def _markdown_report(
    runs: Sequence[RunData],
    rows: Sequence[Mapping[str, Any]],
    figures: Mapping[str, Path],
    out_dir: Path,
    seeds: Mapping[str, Any] | None = None,
    plasticity_result: Mapping[str, Any] | None = None,
) -> str:
    lines = [
        "# Run comparison",
        "",
        render_markdown(rows),
        "",
        *([incomplete_note(runs, seeds), ""] if any(not run.complete for run in runs) else []),
        "Dead ratios are at the last epoch-end liveness measurement (validation split, eval mode), or "
        "the last logged value for a run without one; effective "
        "parameters and alive MLP units are the last logged values, after any revival; units revived are "
        "summed over all revivals; weights pruned is the last total; tokens/s is the median. "
        f"`{MISSING}`: the run has no such value.",
        "",
    ]
    if seeds:
        lines += [
            "## Arms over seeds",
            "",
            _markdown(*group_cells(seeds["groups"])),
            "",
            "Runs whose configs differ only in `train.seed` (and in where they were kept and logged) are "
            "one arm: each number is the mean ± the sample standard deviation over its n seeds.",
            "",
        ]
        if seeds["differences"]:
            diffs = seeds["differences"]
            lines += [
                f"## Difference to {seeds['reference']} in final validation loss",
                "",
                _markdown(*difference_cells(diffs)),
                "",
                f"Difference of the means (arm minus {seeds['reference']}) with its "
                f"{diffs[0]['confidence']:.0%} interval; method: {WELCH_METHOD}. Paired: over the seeds both "
                "arms ran (same initial weights and data order), the mean of the per-seed differences; method: "
                f"{PAIRED_METHOD}. It takes out what a seed does to both arms alike, so it is the narrower "
                "when seeds differ more than arms. An interval that contains 0 does not tell the arms apart at "
                "that level; `-`: fewer than 2 seeds (pairs) on a side.",
                "",
            ]
    if plasticity_result:
        lines += _plasticity_markdown(plasticity_result)
    lines += ["## Runs", ""]
    lines += [f"- **{run.name}**: `{run.source}`" for run in runs]
    if figures:
        lines += ["", "## Figures", ""]
        for title, path in figures.items():
            rel = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else path.as_posix()
            lines += [f"### {title[0].upper()}{title[1:]}", "", f"![{title}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(
    runs: Sequence[RunData],
    out_dir: str | Path,
    baseline: str | None = None,
    include_incomplete: bool = False,
) -> dict[str, Any]:
    """Table and figures of `runs` into `out_dir`: compare.md, compare.json and PNGs; with arms of 2 or more
    seeds also seeds.json (mean, sd, n per arm and the differences to the reference arm) and band figures.
    Runs that did not finish are marked in the table and left out of the seed statistics unless
    `include_incomplete`.

    When runs have task sequences (`task/index` rows) also plasticity.json (`seeds.plasticity`: the last-half
    end-of-task losses per arm, the paired differences to the trains-on and fresh-start arms, the plasticity gap
    and the recovered fraction of it) and the plasticity figure.

    Returns {"rows", "markdown" (path), "json" (path), "figures" ({name: path}), "text" (console table),
    "seeds" (the seed summary or None), "plasticity" (`seeds.plasticity`'s result or None)}.
    """
    if not runs:
        raise UserError("nothing to compare: no runs given")
    rows = summarise_all(runs)
    # Before anything is written: a bad --baseline or a file in the way of out_dir writes nothing.
    seeds = seed_summary(runs, rows, baseline, include_incomplete)
    groups = group_seeds(*seed_runs(runs, rows, include_incomplete))
    tasks = plasticity(groups)
    out = check_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(runs, out)
    text = render_text(rows)
    if any(not run.complete for run in runs):
        text += "\n\n" + incomplete_note(runs, seeds).replace("**", "")
    if seeds:
        figures.update(write_band_figures(groups, out))
        (out / "seeds.json").write_text(json.dumps(seeds, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        text += "\n\narms over seeds (mean ± sd):\n" + _text(*group_cells(seeds["groups"]))
        if seeds["differences"]:
            text += (
                f"\n\nfinal val loss, difference to {seeds['reference']} (Welch and paired t intervals):\n"
                + _text(*difference_cells(seeds["differences"]))
            )
    if tasks:
        figures.update(write_plasticity_figure(groups, out))
        (out / "plasticity.json").write_text(
            json.dumps(tasks, indent=1, allow_nan=False) + "\n", encoding="utf-8"
        )
        text += _plasticity_text(tasks)
    md_path, json_path = out / "compare.md", out / "compare.json"
    md_path.write_text(_markdown_report(runs, rows, figures, out, seeds, tasks), encoding="utf-8")
    json_path.write_text(json.dumps(rows, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return {
        "rows": rows,
        "markdown": md_path,
        "json": json_path,
        "figures": figures,
        "text": text,
        "seeds": seeds,
        "plasticity": tasks,
    }


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    baseline: str | None = None,
    include_incomplete: bool = False,
) -> dict[str, Any]:
    """Load run directories and write their comparison into `out_dir` (see `write_comparison`)."""
    return write_comparison(load_runs(run_dirs), out_dir, baseline, include_incomplete)
