"""Seeds -> arms: runs whose configs differ only in `train.seed` grouped into one arm, each arm's mean and sd,
and each arm's difference to the reference arm (the statistics themselves are `reviveformer.stats`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reviveformer.compare.runs import RunData, _dedupe, _number
from reviveformer.compare.summary import TASK_TRAIN_LAST_HALF, TASK_VAL_LAST_HALF, TASKS, _get
from reviveformer.errors import UserError
from reviveformer.stats import (
    FIELLER_METHOD,
    PAIRED_METHOD,
    WELCH_METHOD,
    Difference,
    mean_sd,
    paired_interval,
    paired_ratio_interval,
    welch_interval,
)

log = logging.getLogger("reviveformer")

# Config keys that say where or how a run was kept and logged, not what was trained: runs whose configs differ
# only in these and in train.seed are seeds of one arm. (wandb: all but job_type, which names the arm.)
_NOT_SETTINGS = {
    ("train", "seed"),
    ("train", "output_dir"),
    ("train", "resume"),
    ("train", "progress"),
    ("train", "plots"),
    ("train", "report"),
    ("data", "cache_dir"),
}
# The columns a seed group summarises (numbers); the others are labels.
_GROUPED = (
    "final_val_loss",
    "best_val_loss",
    "alive_fraction",
    "effective_params",
    "effective_param_fraction",
    "revived_units",
    "pruned_weights",
    "tokens_per_s",
)


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config without the keys that do not change what is trained (seed, directories, W&B names),
    flattened to dotted keys."""
    flat: dict[str, Any] = {}
    for section, values in config.items():
        if not isinstance(values, Mapping):
            flat[str(section)] = values
            continue
        for key, value in values.items():
            if (section, key) in _NOT_SETTINGS or (section == "wandb" and key != "job_type"):
                continue
            flat[f"{section}.{key}"] = value
    return flat


@dataclass
class SeedGroup:
    """Runs that differ only in train.seed: one arm of a comparison."""

    label: str
    runs: list[RunData]
    rows: list[dict[str, Any]]
    """The runs' `summarise` rows."""

    @property
    def seeds(self) -> list[Any]:
        return [_get(r.config, "train", "seed") for r in self.runs]

    def values(self, key: str) -> list[float]:
        """The runs' finite values of a table column (runs without it are left out)."""
        return [float(v) for row in self.rows if (v := _number(row.get(key))) is not None]

    def values_by_seed(self, key: str) -> dict[Any, float]:
        """Seed -> the run's finite value of a table column (runs without it are left out)."""
        return {
            seed: float(v)
            for seed, row in zip(self.seeds, self.rows, strict=True)
            if (v := _number(row.get(key))) is not None
        }


def group_seeds(runs: Sequence[RunData], rows: Sequence[dict[str, Any]]) -> list[SeedGroup]:
    """Runs grouped by their settings (everything but the seed and where they were kept), in order of first
    appearance. A group is labelled by its arm; arms that would share a label get the settings that tell them
    apart (`baseline (activation=gelu)`)."""
    keyed: dict[str, SeedGroup] = {}
    flat: dict[str, dict[str, Any]] = {}
    for run, row in zip(runs, rows, strict=True):
        st = settings(run.config)
        key = json.dumps(st, sort_keys=True, default=str)
        if key not in keyed:
            keyed[key] = SeedGroup(label=str(row.get("arm") or run.name), runs=[], rows=[])
            flat[key] = st
        keyed[key].runs.append(run)
        keyed[key].rows.append(row)
    groups = list(keyed.values())
    arms = {k: g.label for k, g in keyed.items()}
    for key, group in keyed.items():
        twins = [k for k in keyed if arms[k] == arms[key] and k != key]
        if twins:
            differ = [k for k in flat[key] if any(flat[t].get(k) != flat[key][k] for t in twins)]
            differ += [k for t in twins for k in flat[t] if k not in flat[key] and k not in differ]
            group.label += (
                " (" + ", ".join(f"{k.rsplit('.', 1)[-1]}={flat[key].get(k)}" for k in differ) + ")"
            )
    for group, label in zip(
        groups, _dedupe([g.label for g in groups]), strict=True
    ):  # any repeat left: numbered
        group.label = label
    return groups


def group_row(group: SeedGroup, sites: Sequence[str]) -> dict[str, Any]:
    """One row per arm: its label, n, the seeds, and for each numeric column {"mean", "sd", "n"} (sd None for one
    value; the column None when no run has it)."""
    row: dict[str, Any] = {
        "arm": group.label,
        "n": len(group.runs),
        "seeds": group.seeds,
        "activation": group.rows[0].get("activation"),
    }
    tasks = [k for k in (TASK_TRAIN_LAST_HALF, TASK_VAL_LAST_HALF) if k in group.rows[0]]
    for key in (*_GROUPED[:2], *tasks, *(f"dead_ratio/{s}" for s in sites), *_GROUPED[2:]):
        values = group.values(key)
        if values:
            mean, sd, n = mean_sd(values)
            row[key] = {"mean": mean, "sd": sd, "n": n}
        else:
            row[key] = None
    return row


def reference_group(groups: Sequence[SeedGroup], baseline: str | None = None) -> SeedGroup:
    """The arm others are compared to: `baseline` if given, else the one arm labelled baseline, else the first."""
    if baseline is not None:
        for g in groups:
            if g.label == baseline:
                return g
        raise UserError(
            f"--baseline {baseline!r} is not one of the arms: {', '.join(g.label for g in groups)}"
        )
    named = [g for g in groups if g.label == "baseline"]
    return named[0] if len(named) == 1 else groups[0]


def differences(
    groups: Sequence[SeedGroup], reference: SeedGroup, key: str = "final_val_loss", confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Each other arm minus the reference in `key`: the difference of the means and Welch's t interval (None
    when an arm has fewer than 2 seeds with the value); and over the seeds both arms ran, the mean of the
    per-seed differences with its paired t interval (`paired_*`, None for fewer than 2 shared seeds)."""
    ref = reference.values(key)
    ref_by_seed = reference.values_by_seed(key)
    out = []
    for g in groups:
        if g is reference:
            continue
        values = g.values(key)
        d: Difference | None = welch_interval(values, ref, confidence)
        by_seed = g.values_by_seed(key)
        shared = [s for s in by_seed if s in ref_by_seed]
        p = paired_interval([by_seed[s] for s in shared], [ref_by_seed[s] for s in shared], confidence)
        out.append(
            {
                "arm": g.label,
                "reference": reference.label,
                "metric": key,
                "n": len(values),
                "n_reference": len(ref),
                "diff": d.diff if d else (mean_sd(values)[0] - mean_sd(ref)[0] if values and ref else None),
                "low": d.low if d else None,
                "high": d.high if d else None,
                "df": d.df if d else None,
                "confidence": confidence,
                "method": WELCH_METHOD if d else "needs 2 or more seeds on both sides",
                "paired_n": len(shared),
                "paired_diff": p.diff if p else None,
                "paired_low": p.low if p else None,
                "paired_high": p.high if p else None,
                "paired_method": PAIRED_METHOD if p else "needs 2 or more seeds run by both arms",
            }
        )
    return out


def seed_runs(
    runs: Sequence[RunData], rows: Sequence[dict[str, Any]], include_incomplete: bool = False
) -> tuple[list[RunData], list[dict[str, Any]]]:
    """The runs (and their rows) that count over seeds: the complete ones, or all with `include_incomplete`.
    An incomplete run's "final" loss is of wherever it stopped, so averaged in it would move the arm's mean."""
    kept = [(run, row) for run, row in zip(runs, rows, strict=True) if include_incomplete or run.complete]
    kept = _distinct(kept)
    return [run for run, _ in kept], [row for _, row in kept]


# The numbers two runs of the same settings and seed must agree in (a deterministic run's; not its speed).
_DETERMINISTIC = tuple(k for k in _GROUPED if k != "tokens_per_s")


def _distinct(kept: list[tuple[RunData, dict[str, Any]]]) -> list[tuple[RunData, dict[str, Any]]]:
    """One run per (settings, seed): a copy of a run (a folder copied, the same command run into another
    folder) is one seed, not two; it is dropped with a warning saying which and why. Two such runs whose
    numbers differ are refused: the training is not deterministic there, and no seed count can say which
    is right."""
    first: dict[tuple[str, str], tuple[RunData, dict[str, Any]]] = {}
    out = []
    for run, row in kept:
        seed = _get(run.config, "train", "seed")
        key = (json.dumps(settings(run.config), sort_keys=True, default=str), json.dumps(seed, default=str))
        if seed is None or key not in first:
            first.setdefault(key, (run, row))
            out.append((run, row))
            continue
        run0, row0 = first[key]
        differ = [k for k in _DETERMINISTIC if _number(row.get(k)) != _number(row0.get(k))]
        if differ:
            k = differ[0]
            raise UserError(
                f"{run.name} and {run0.name} ran the same settings with seed {seed} but end with other numbers "
                f"({k}: {row.get(k)} and {row0.get(k)}): the training is not deterministic there, so they "
                "cannot count as one seed, and as two they would count one seed twice; compare them apart"
            )
        log.warning(
            "%s is a copy of %s (same settings, seed %s, same numbers): counted once",
            run.name,
            run0.name,
            seed,
        )
    return out


def seed_summary(
    runs: Sequence[RunData],
    rows: Sequence[dict[str, Any]],
    baseline: str | None = None,
    include_incomplete: bool = False,
) -> dict[str, Any] | None:
    """The arms over seeds, when some arm has 2 or more seeds: {"groups": group rows, "reference": label,
    "differences": to the reference in final val loss, "method", "incomplete": {"runs": names of the runs
    that did not finish, "included": whether they count}}. Incomplete runs are left out unless
    `include_incomplete`. None when every arm has one run."""
    incomplete = [run.name for run in runs if not run.complete]
    runs, rows = seed_runs(runs, rows, include_incomplete)
    groups = group_seeds(runs, rows)
    if all(len(g.runs) < 2 for g in groups):
        if baseline is not None:
            raise UserError(
                f"--baseline {baseline}: no arm has 2 or more seeds, so there is nothing to compare "
                "over seeds (runs differing only in train.seed make one arm)"
            )
        return None
    sites = [k.split("/", 1)[1] for k in rows[0] if k.startswith("dead_ratio/")] if rows else []
    reference = reference_group(groups, baseline)
    return {
        "groups": [group_row(g, sites) for g in groups],
        "reference": reference.label,
        "differences": differences(groups, reference),
        "method": WELCH_METHOD,
        "incomplete": {"runs": incomplete, "included": include_incomplete},
    }


# ---------------------------------------------------------------------------------------------- plasticity

TRAINS_ON = "none"
"""The revival.method of the arm that trains on through the tasks."""
FRESH_START = "fresh_start"
"""The revival.method of the arm that re-initialises the model at every task: the ceiling."""
PLASTICITY_METRIC = (
    "mean end-of-task loss over the last half of the tasks (tasks k >= n_tasks // 2): training loss of each "
    "task's last log window, and the task's held-out loss at its end"
)
_TASK_METRICS = {"train": TASK_TRAIN_LAST_HALF, "val": TASK_VAL_LAST_HALF}


def _method(group: SeedGroup) -> str | None:
    method = _get(group.runs[0].config, "revival", "method")
    return str(method) if method else None


def _without_revival(group: SeedGroup) -> str:
    """The group's settings but the revival method's (revival.*, and wandb.job_type, which names the arm):
    a method arm is compared to the trains-on and fresh-start arms of the same model, data and training."""
    st = settings(group.runs[0].config)
    kept = {k: v for k, v in st.items() if not k.startswith("revival.") and k != "wandb.job_type"}
    return json.dumps(kept, sort_keys=True, default=str)


def _paired(a: SeedGroup, b: SeedGroup, key: str, confidence: float) -> dict[str, Any]:
    """a - b over the seeds both ran: {"n", "diff", "low", "high"} (no interval for fewer than 2 seeds)."""
    va, vb = a.values_by_seed(key), b.values_by_seed(key)
    shared = [s for s in va if s in vb]
    p = paired_interval([va[s] for s in shared], [vb[s] for s in shared], confidence)
    diff = p.diff if p else (va[shared[0]] - vb[shared[0]] if shared else None)
    return {"n": len(shared), "diff": diff, "low": p.low if p else None, "high": p.high if p else None}


def _recovered(
    arm: SeedGroup, none: SeedGroup, fresh: SeedGroup, key: str, confidence: float
) -> dict[str, Any]:
    """The fraction of the plasticity gap the arm recovers, over the seeds all three ran: mean(none - arm) /
    mean(none - fresh start) (1: as good as a fresh start, 0: as the arm that trains on), with Fieller's interval
    (None for fewer than 2 seeds, or unbounded when the gap is not told apart from 0)."""
    va, vn, vf = arm.values_by_seed(key), none.values_by_seed(key), fresh.values_by_seed(key)
    shared = [s for s in va if s in vn and s in vf]
    recovered = [vn[s] - va[s] for s in shared]
    gap = [vn[s] - vf[s] for s in shared]
    mean_gap = math.fsum(gap) / len(gap) if gap else 0.0
    fraction = math.fsum(recovered) / len(recovered) / mean_gap if mean_gap else None
    interval = paired_ratio_interval(recovered, gap, confidence)
    return {
        "n": len(shared),
        "fraction": fraction,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
        "bounded": interval is not None,
    }


def _plasticity_arm(
    g: SeedGroup, none: SeedGroup | None, fresh: SeedGroup | None, confidence: float
) -> dict[str, Any]:
    """One arm of `plasticity`: its numbers, and its differences to the trains-on arm `none` and the fresh-start
    arm `fresh` of the same settings (None where that arm is missing, or is this one)."""
    arm: dict[str, Any] = {
        "arm": g.label,
        "method": _method(g),
        "n": len(g.runs),
        "seeds": g.seeds,
        "tasks": sorted({row[TASKS] for row in g.rows if row.get(TASKS) is not None}),
    }
    for name, key in _TASK_METRICS.items():
        values = g.values(key)
        mean, sd, n = mean_sd(values) if values else (None, None, 0)
        arm[name] = {"mean": mean, "sd": sd, "n": n}
    for field, ref in (("to_none", none), ("to_fresh_start", fresh)):
        arm[field] = (
            None
            if ref is None or ref is g
            else {
                "reference": ref.label,
                **{n: _paired(g, ref, k, confidence) for n, k in _TASK_METRICS.items()},
            }
        )
    arm["recovered"] = (
        None
        if none is None or fresh is None or g in (none, fresh)
        else {n: _recovered(g, none, fresh, k, confidence) for n, k in _TASK_METRICS.items()}
    )
    return arm


def plasticity(groups: Sequence[SeedGroup], confidence: float = 0.95) -> dict[str, Any] | None:
    """The plasticity numbers of the arms with task sequences, None when no run has task ends.

    Per arm (`"arms"`): its revival method, n, seeds, the tasks its runs ended, and for `train` and `val` (the
    last-half means of `PLASTICITY_METRIC`) the mean and sd over seeds; the paired difference (by seed) to the
    trains-on arm (`"to_none"`, revival.method none) and to the fresh-start arm (`"to_fresh_start"`) of the same
    settings but the revival method, with its paired t interval; and `"recovered"`: the fraction of the gap
    recovered, with Fieller's interval. `"gaps"`: per pair of trains-on and fresh-start arms, the plasticity gap
    (trains on - fresh start) with its paired interval. A difference is None when its reference arm is not
    among the runs."""
    tasked = [g for g in groups if any(row.get(TASKS) for row in g.rows)]
    if not tasked:
        return None
    refs: dict[str, dict[str, SeedGroup]] = {TRAINS_ON: {}, FRESH_START: {}}
    for g in tasked:
        if (method := _method(g)) in refs:
            refs[method].setdefault(_without_revival(g), g)
    arms = [
        _plasticity_arm(
            g,
            refs[TRAINS_ON].get(_without_revival(g)),
            refs[FRESH_START].get(_without_revival(g)),
            confidence,
        )
        for g in tasked
    ]
    gaps = [
        {
            "none": none.label,
            "fresh_start": fresh.label,
            **{n: _paired(none, fresh, k, confidence) for n, k in _TASK_METRICS.items()},
        }
        for base, none in refs[TRAINS_ON].items()
        if (fresh := refs[FRESH_START].get(base)) is not None
    ]
    return {
        "metric": PLASTICITY_METRIC,
        "confidence": confidence,
        "method": PAIRED_METHOD,
        "recovered_method": FIELLER_METHOD,
        "arms": arms,
        "gaps": gaps,
    }
