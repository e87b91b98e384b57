"""The end of a sweep: each run's last liveness measurement (or a re-measurement at another threshold), the
per-layer dead-ratio charts (one line per cell, the mean over its seeds), the comparison of all runs with the
seeds of a cell grouped, sweep.json's summary, and with W&B on a summary run of the sweep's group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reviveformer.sweep.grid import PlannedRun
from reviveformer.sweep.record import write_summary


def final_liveness(plan: list[PlannedRun], threshold: float | None) -> dict[str, dict]:
    """Each run's last liveness measurement, or with `threshold` its final model measured again at that
    threshold; by run label. Read on every process: an error raised on one alone would leave the others
    waiting."""
    liveness = {r.label: _last_liveness(r.run_dir) for r in plan}
    if threshold is not None:
        liveness = _remeasure({r.label: r.run_dir for r in plan}, threshold)
    return liveness


def _last_liveness(run_dir: Path) -> dict:
    from reviveformer.compare import load_run

    liveness = load_run(run_dir).liveness
    if liveness is None:
        from reviveformer.errors import UserError

        raise UserError(f"{run_dir} has no liveness measurement; re-run it with liveness.enabled=true")
    return liveness


def _remeasure(runs: dict[str, Path], threshold: float) -> dict[str, dict]:
    """Each run's final model measured again at another firing threshold (counts depend on the threshold,
    so saved counts cannot be re-thresholded; the saved model can be re-measured without re-training)."""
    from accelerate import Accelerator

    from reviveformer.saved_model import measure_saved, open_saved_model

    acc = Accelerator()
    out = {}
    for name, d in runs.items():
        # this sweep's own runs, trained from the user's recipe and grid: a plug-in they name is the user's
        saved = open_saved_model(
            str(d / "final"), [f"liveness.threshold={threshold}"], trust_remote_code=True
        )
        _, report, _ = measure_saved(saved, acc, progress_desc=f"re-measure {name}")
        out[name] = report.to_json()
    return out


def summarise_sweep(
    plan: list[PlannedRun],
    axes: list[tuple[str, list[str]]],
    seeds: list[int],
    out: Path,
    liveness: dict[str, dict],
    threshold: float | None,
    wandb_cfg: Any = None,
    group: str | None = None,
) -> None:
    """sweep.json, the per-layer dead-ratio charts (one line per cell, the mean over its seeds) and the
    comparison of all runs, seeds of a cell grouped; with W&B on (`wandb_cfg`), the same figures and tables in
    a summary run of the sweep's group."""
    from reviveformer.compare import compare_runs

    per_cell = _mean_liveness_per_cell(plan, liveness)
    out.mkdir(parents=True, exist_ok=True)
    charts = _dead_ratio_charts(per_cell, out, threshold)
    result = compare_runs([str(r.run_dir) for r in plan], out / "compare")
    write_summary(
        out,
        {
            "grid": dict(axes),
            "seeds": seeds,
            "threshold": threshold,
            "runs": {r.label: str(r.run_dir) for r in plan},
            "cells": {c: [r.label for r in plan if (r.cell or "all") == c] for c in per_cell},
            "dead_ratio_per_layer": {
                label: {s: [e["dead_ratio"] for e in v["sites"][s]] for s in v["sites"]}
                for label, v in liveness.items()
            },
        },
    )
    print(result["text"])
    print(f"charts: {', '.join(str(c) for c in charts)}")
    print(f"table: {result['markdown']}")
    if wandb_cfg is not None:
        _log_summary_run(wandb_cfg, out, group, result, charts)


def _dead_ratio_charts(per_cell: dict[str, dict], out: Path, threshold: float | None) -> list:
    """One chart per site measured: each cell's per-layer dead ratio, the mean over its seeds."""
    from reviveformer.architectures import site_names
    from reviveformer.figures import plot_runs_dead_ratio_per_layer

    sites = [s for s in site_names() if any(s in v["sites"] for v in per_cell.values())]
    suffix = f" (threshold {threshold:g})" if threshold is not None else ""
    return [
        plot_runs_dead_ratio_per_layer(
            per_cell,
            site,
            out / f"dead_ratio_per_layer_{site}.png",
            title=f"Dead units per layer, mean over seeds: {site}{suffix}",
        )
        for site in sites
    ]


def _log_summary_run(wandb_cfg: Any, out: Path, group: str | None, result: dict, charts: list) -> None:
    """The comparison's figures and tables, and the charts, in one W&B run of the sweep's group."""
    from reviveformer import metric_keys
    from reviveformer.compare import difference_cells, group_cells, table_cells
    from reviveformer.tracking import log_summary_run

    figures = {metric_keys.sweep_key(Path(path).stem): path for path in result["figures"].values()}
    figures.update({metric_keys.sweep_key(Path(c).stem): c for c in charts})
    tables = {metric_keys.sweep_key("runs"): table_cells(result["rows"])[:2]}
    if result["seeds"]:
        tables[metric_keys.sweep_key("arms_over_seeds")] = group_cells(result["seeds"]["groups"])[:2]
        if result["seeds"]["differences"]:
            tables[metric_keys.sweep_key("differences")] = difference_cells(result["seeds"]["differences"])[
                :2
            ]
    log_summary_run(wandb_cfg, out, f"{out.name}-summary", group or out.name, figures, tables)


def _mean_liveness_per_cell(plan: list[PlannedRun], liveness: dict[str, dict]) -> dict[str, dict]:
    """Per cell, each layer's dead ratio averaged over the cell's seeds, in the liveness.json shape."""
    out: dict[str, dict] = {}
    for cell in dict.fromkeys(r.cell for r in plan):
        runs = [liveness[r.label] for r in plan if r.cell == cell]
        sites = {}
        for site in runs[0]["sites"]:
            layers = [run["sites"].get(site, []) for run in runs]
            if any(len(ls) != len(layers[0]) for ls in layers):
                continue
            sites[site] = [
                {"layer": e["layer"], "dead_ratio": sum(ls[k]["dead_ratio"] for ls in layers) / len(layers)}
                for k, e in enumerate(layers[0])
            ]
        out[cell or "all"] = {"sites": sites}
    return out
