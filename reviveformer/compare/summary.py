"""One table row per run: final and best validation loss, dead ratios per site, capacity, revival, speed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reviveformer import metric_keys
from reviveformer.architectures import site_order
from reviveformer.compare.runs import RunData, _number
from reviveformer.plugins import names_code
from reviveformer.run_files import last, series, task_ends
from reviveformer.stats import last_half

# GPT-2's own activation: what a new model gets when model.activation is left unset.
DEFAULT_ACTIVATION = "gelu_new"
# The status cell of a W&B run: its run folder's status.json is not read from W&B.
UNKNOWN_STATUS = "unknown (W&B)"
# Columns of runs with a task sequence: the tasks ended, and the mean end-of-task training loss and held-out loss
# over the last half of them (stats.last_half), the plasticity metric.
TASKS = "tasks"
TASK_TRAIN_LAST_HALF = "task_train_loss_last_half"
TASK_VAL_LAST_HALF = "task_val_loss_last_half"
TASK_COLUMNS = (TASKS, TASK_TRAIN_LAST_HALF, TASK_VAL_LAST_HALF)


def _get(config: Mapping[str, Any], section: str, key: str) -> Any:
    part = config.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def arm_of(config: Mapping[str, Any]) -> str | None:
    """wandb.job_type, else the arm of revival.method: a built-in's from the revival registry (none ->
    baseline, synaptic_stripping -> stripping), the same place the trainer takes the job_type from; a plug-in
    `package.module:Class` by its class name, never imported (a run folder's files must not run code)."""
    job_type = _get(config, "wandb", "job_type")
    if job_type:
        return str(job_type)
    method = _get(config, "revival", "method")
    if not method:
        return None
    method = str(method)
    if names_code(method):
        return method.rpartition(":")[2] or method
    from reviveformer.revival import arm_of_method  # imports torch: only when a run's config needs it

    return arm_of_method(method)


def _activation_of(config: Mapping[str, Any]) -> str | None:
    name = _get(config, "model", "activation")
    if name:
        return str(name)
    # Unset on a new model means GPT-2's own; unset on a fine-tune means the checkpoint's, unknown here.
    return None if _get(config, "model", "init_from") else DEFAULT_ACTIVATION


def _site_order(sites: Iterable[str]) -> list[str]:
    """The registry's site order first (as in the figures), then any other site alphabetically."""
    return site_order(sites)


def sites_of(run: RunData) -> list[str]:
    """Sites with a dead ratio in the run's liveness or metrics, in the design's order."""
    found = set((run.liveness or {}).get("sites") or {})
    for row in run.metrics:
        for key in row:
            if (m := metric_keys.parse_dead_ratio_key(key)) is not None:
                found.add(m[0])
    return _site_order(found)


def site_dead_ratio(run: RunData, site: str) -> float | None:
    """Overall dead ratio of a site at the end: dead units / units over all layers of the last liveness
    measurement; else the last logged `liveness/<site>/dead_ratio`; else the mean of the per-layer ratios
    (GPT-2 layers of one site have equal widths, so the mean is the overall ratio)."""
    layers = ((run.liveness or {}).get("sites") or {}).get(site) or []
    if layers and all("units" in d for d in layers):
        units = sum(int(d["units"]) for d in layers)
        dead = sum(
            len(d["dead_units"])
            if isinstance(d.get("dead_units"), list)
            else round(float(d["dead_ratio"]) * int(d["units"]))
            for d in layers
        )
        if units:
            return dead / units
    if (v := last(run.metrics, metric_keys.dead_ratio_key(site))) is not None:
        return v
    ratios = [r for d in layers if (r := _number(d.get("dead_ratio"))) is not None]
    return sum(ratios) / len(ratios) if ratios else None


def has_tasks(run: RunData) -> bool:
    """Whether the run logged the end of a task (a `task/index` row)."""
    return any(_number(row.get(metric_keys.TASK_INDEX)) is not None for row in run.metrics)


def task_numbers(run: RunData) -> dict[str, Any]:
    """The task columns of a run: `tasks` (the tasks it ended: the highest task index + 1), and the mean of
    `task/train_loss` and of `task/val_loss` over the last half of them; a mean is None when a task of that half
    lacks the value (a mean over fewer tasks would not be the same metric)."""
    ends = task_ends(run.metrics)
    n_tasks = max(ends) + 1 if ends else 0
    row: dict[str, Any] = {TASKS: n_tasks}
    half = last_half(n_tasks)
    for column, key in (
        (TASK_TRAIN_LAST_HALF, metric_keys.TASK_TRAIN_LOSS),
        (TASK_VAL_LAST_HALF, metric_keys.TASK_VAL_LOSS),
    ):
        values = [ends[k][key] for k in half if key in ends.get(k, {})]
        row[column] = math.fsum(values) / len(values) if values and len(values) == len(half) else None
    return row


def _capacity(run: RunData, key: str) -> float | None:
    # The metric at the highest step is logged after any revival at that step, so it counts newly pruned
    # weights; the liveness file is written before revival, so it is only the fallback.
    if (v := last(run.metrics, metric_keys.capacity_key(key))) is not None:
        return v
    return _number(((run.liveness or {}).get("capacity") or {}).get(key))


def summarise(run: RunData, sites: Sequence[str] | None = None, tasks: bool | None = None) -> dict[str, Any]:
    """One row of the comparison table; a value the run does not have is None.

    Keys: run, status (status.json's state and step, `legacy (...)` for a folder without one), complete (the
    run reached its planned end; None for a W&B run: not known), arm, activation, final_val_loss, best_val_loss,
    with `tasks` (default: when the run has task ends) the `TASK_COLUMNS` (`task_numbers`), `dead_ratio/<site>`
    for each site (`sites`, default the run's own), alive_fraction, effective_params, effective_param_fraction,
    revived_units (summed over revivals), pruned_weights (last revival/pruned_total), tokens_per_s (median).
    """
    val = [v for _, v in series(run.metrics, metric_keys.VAL_LOSS)]
    revived = series(run.metrics, metric_keys.revival_key("revived_units"))
    tokens = [v for _, v in series(run.metrics, metric_keys.TRAIN_TOKENS_PER_S)]
    effective = _capacity(run, "effective_params")
    pruned = last(run.metrics, metric_keys.revival_key("pruned_total"))
    row: dict[str, Any] = {
        "run": run.name,
        "status": run.status.short() if run.status is not None else UNKNOWN_STATUS,
        # None (shown "-") for a W&B run: not known, though counted as complete over seeds
        "complete": run.status.complete if run.status is not None else None,
        "arm": arm_of(run.config),
        "activation": _activation_of(run.config),
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(val) if val else None,
    }
    if has_tasks(run) if tasks is None else tasks:
        row.update(task_numbers(run) if has_tasks(run) else dict.fromkeys(TASK_COLUMNS))
    for site in sites_of(run) if sites is None else sites:
        row[f"dead_ratio/{site}"] = site_dead_ratio(run, site)
    row.update(
        {
            "alive_fraction": _capacity(run, "alive_fraction"),
            "effective_params": int(effective) if effective is not None else None,
            "effective_param_fraction": _capacity(run, "effective_param_fraction"),
            "revived_units": int(sum(v for _, v in revived)) if revived else None,
            "pruned_weights": int(pruned) if pruned is not None else None,
            "tokens_per_s": statistics.median(tokens) if tokens else None,
        }
    )
    return row


def summarise_all(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """Rows for all runs with the same columns: every site any run has, and the task columns when any run has
    task ends (None where a run lacks it)."""
    sites = _site_order({s for run in runs for s in sites_of(run)})
    tasks = any(has_tasks(run) for run in runs)
    return [summarise(run, sites, tasks) for run in runs]
