"""Side-by-side comparison of training runs: one table row per run, and figures with one line per run.

Runs come from local run directories (`config.yaml`, `metrics.jsonl`, `liveness/epoch_*.json`, written by
`reviveformer train`) or from a W&B group. Both are turned into the same `RunData`, so the table and the
figures are built by the same code whichever way the runs arrived.

The contract: docs/design.md, "Interfaces" (compare, sweep folders, seed groups).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reviveformer import metric_keys, plots
from reviveformer.errors import UserError
from reviveformer.sites import site_order
from reviveformer.stats import (
    PAIRED_METHOD,
    WELCH_METHOD,
    Difference,
    mean_sd,
    paired_interval,
    welch_interval,
)

# GPT-2's own activation: what a new model gets when model.activation is left unset.
DEFAULT_ACTIVATION = "gelu_new"

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.json$")


@dataclass
class RunData:
    """What a comparison needs of one run, whichever way it was read."""

    name: str
    """Label of the run in the table and legends (unique within one comparison)."""
    config: dict[str, Any]
    """The run's resolved config (sections model, data, train, liveness, alerts, revival, wandb)."""
    metrics: list[dict[str, Any]]
    """Logged rows, `{"step": N, key: value, ...}`, in logging order."""
    liveness: dict[str, Any] | None = None
    """The last liveness measurement (liveness.json format; from W&B only `layer` and `dead_ratio`)."""
    source: str = ""
    """Where the run was read from: a directory path or `wandb:ENTITY/PROJECT/RUN_ID`."""


# ---------------------------------------------------------------------------------------------- loading


def _last_liveness_file(run_dir: Path) -> Path | None:
    """The epoch_NNN.json with the highest epoch number (numeric, so epoch_1000 sorts after epoch_999)."""
    files = [
        (int(m[1]), p)
        for p in (run_dir / "liveness").glob("epoch_*.json")
        if (m := _EPOCH_FILE.match(p.name))
    ]
    return max(files)[1] if files else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"{path}: cannot read it as JSON ({e}); expected a file written by `reviveformer train`"
        ) from e


def load_run(run_dir: str | Path, name: str | None = None) -> RunData:
    """Read a run directory written by `reviveformer train`. `name` defaults to the directory's name."""
    path = Path(run_dir)
    expected = "a run directory with metrics.jsonl and config.yaml, as written by `reviveformer train`"
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; expected {expected}")
    missing = [f for f in ("metrics.jsonl", "config.yaml") if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path}: not a run directory (no {' and no '.join(missing)}); expected {expected}")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path / 'config.yaml'}: cannot read it as YAML ({e}); expected {expected}") from e
    if not isinstance(config, dict):
        raise UserError(
            f"{path / 'config.yaml'}: holds {type(config).__name__}, not a mapping; expected {expected}"
        )
    config = _with_saved_activation(config, path)
    liveness_file = _last_liveness_file(path)
    liveness = _read_json(liveness_file) if liveness_file else None
    metrics = plots.read_metrics(path / "metrics.jsonl")
    if liveness is None:
        # No epoch ended (or liveness was off): the last per-layer values logged during training stand in.
        liveness = liveness_from_rows(metrics)
    return RunData(
        name=name or path.resolve().name, config=config, metrics=metrics, liveness=liveness, source=str(path)
    )


def _with_saved_activation(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Fill model.activation from final/config.json when the recipe left it to the checkpoint (init_from)."""
    model = config.get("model")
    if not isinstance(model, dict) or model.get("activation"):
        return config
    saved = run_dir / "final" / "config.json"
    if saved.is_file():
        try:
            name = json.loads(saved.read_text(encoding="utf-8")).get("reviveformer_activation")
        except (OSError, json.JSONDecodeError, AttributeError):
            name = None
        if name:
            return {**config, "model": {**model, "activation": str(name)}}
    return config


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Labels for runs: the directory name, or as many trailing path parts as make the labels distinct
    (`a/run`, `b/run` for two directories both called `run`)."""
    parts = [Path(p).resolve().parts for p in paths]
    distinct = set(parts)
    n = 1
    while len({p[-n:] for p in distinct}) < len(distinct):
        n += 1
    # The same directory given twice: _dedupe numbers the repeats so rows and legends stay apart.
    return _dedupe(["/".join(p[-n:]) for p in parts])


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """`load_run` for each directory, labelled with `unique_names`."""
    if not run_dirs:
        raise UserError("no run directories given; pass one or more RUN_DIRs written by `reviveformer train`")
    return [load_run(d, name) for d, name in zip(run_dirs, unique_names(run_dirs), strict=True)]


# ---------------------------------------------------------------------------------------------- W&B


def _number(value: Any) -> float | None:
    """A finite number, or None (W&B history holds None for keys not logged at a step, and may hold NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _history_row(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """A W&B history row as a metrics.jsonl row: `_step` -> `step`, W&B's own `_` keys, None, NaN and
    non-scalars (histograms, images) dropped. None if it has no step."""
    step = raw.get("_step", raw.get("step"))
    if _number(step) is None:
        return None
    row: dict[str, Any] = {"step": int(step)}
    for key, value in raw.items():
        if key.startswith("_") or key == "step":
            continue
        if (v := _number(value)) is not None:
            row[key] = int(value) if isinstance(value, int) else v
    return row


def liveness_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per site, the per-layer dead ratios of the last row (highest step) that logged any for that site,
    in the liveness.json shape (`layer` and `dead_ratio` only). None if no row has any."""
    latest: dict[str, tuple[int, int, dict[int, float]]] = {}
    for order, row in enumerate(rows):
        layers: dict[str, dict[int, float]] = {}
        for key, value in row.items():
            m = metric_keys.parse_dead_ratio_key(key)
            if m is not None and m[1] is not None and (v := _number(value)) is not None:
                layers.setdefault(m[0], {})[m[1]] = v
        step = int(_number(row.get("step")) or 0)
        for site, found in layers.items():
            # Ties on step go to the later row: a row logged after another at the same step is newer.
            if site not in latest or (step, order) >= latest[site][:2]:
                latest[site] = (step, order, found)
    if not latest:
        return None
    sites = {
        site: [{"layer": i, "dead_ratio": r} for i, r in sorted(found.items())]
        for site, (_, _, found) in latest.items()
    }
    return {"sites": sites}


def rows_from_wandb_history(
    runs: Sequence[tuple[str, Mapping[str, Any], Iterable[Mapping[str, Any]]]],
) -> list[RunData]:
    """W&B API data -> RunData: `(run name, run.config, run.scan_history() rows)` for each run.

    History rows carry `_step` and metric keys whose values may be None (not logged at that step) or NaN;
    those are dropped. The end-of-run liveness per layer is taken from the last row holding
    `liveness/<site>/layer_<i>/dead_ratio` keys.
    """
    out: list[RunData] = []
    names = [name for name, _, _ in runs]
    for (name, config, history), label in zip(runs, _dedupe(names), strict=True):
        metrics = [row for raw in history if (row := _history_row(raw)) is not None]
        metrics.sort(key=lambda r: r["step"])  # stable: rows of one step keep their order
        out.append(
            RunData(
                name=label,
                config=_plain(config),
                metrics=metrics,
                liveness=liveness_from_rows(metrics),
                source=f"wandb:{name}",
            )
        )
    return out


def _dedupe(names: Sequence[str]) -> list[str]:
    """W&B run names need not be unique: number the repeats."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out


def _plain(config: Any) -> Any:
    """A plain nested dict/list copy (W&B's config objects are mappings, not dicts)."""
    if isinstance(config, Mapping):
        return {str(k): _plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_plain(v) for v in config]
    return config


WANDB_HINT = (
    "this path reads runs from the W&B server and needs W&B credentials: run `wandb login` or set "
    "WANDB_API_KEY (and WANDB_BASE_URL for a private server), and check the network"
)


def fetch_wandb(entity_project: str, group: str) -> list[RunData]:
    """The runs of W&B group `group` in `entity_project` ("ENTITY/PROJECT"), as RunData."""
    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise UserError(f"--wandb {entity_project!r}: expected ENTITY/PROJECT, e.g. my-team/reviveformer")
    from reviveformer.tracking import fetch_wandb_group  # the one module that talks to W&B

    try:
        fetched = fetch_wandb_group(entity_project, group)
    except ImportError as e:
        raise UserError(f"the wandb package is not installed ({e}); {WANDB_HINT}") from e
    except Exception as e:  # any failure of the W&B client (auth, network, API) reaches the user alike
        raise UserError(
            f"could not read group {group!r} of W&B project {entity_project!r}: "
            f"{type(e).__name__}: {e}; {WANDB_HINT}"
        ) from e
    for _, config, _, job_type, _ in fetched:
        wandb_section = config.setdefault("wandb", {})
        # The arm is W&B's job_type; configs of runs whose job_type was derived hold None there.
        if isinstance(wandb_section, dict) and not wandb_section.get("job_type") and job_type:
            wandb_section["job_type"] = job_type
    if not fetched:
        raise UserError(
            f"W&B project {entity_project!r} has no runs in group {group!r}; check the names "
            "(the group is the recipe's wandb.group)"
        )
    runs = rows_from_wandb_history([(name, config, history) for name, config, history, _, _ in fetched])
    for data, (_, _, _, _, run_id) in zip(runs, fetched, strict=True):
        data.source = f"wandb:{entity_project}/{run_id}"
    return runs


# ---------------------------------------------------------------------------------------------- summary


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, by step; a step logged twice (a resumed run re-logs the steps after its
    checkpoint) keeps its last value, so totals do not count it twice. Non-finite values are left out."""
    by_step: dict[int, float] = {}
    for row in rows:
        v = _number(row.get(key))
        if v is not None and _number(row.get("step")) is not None:
            by_step[int(row["step"])] = v
    return sorted(by_step.items())


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    series = _series(rows, key)
    return series[-1][1] if series else None


def _get(config: Mapping[str, Any], section: str, key: str) -> Any:
    part = config.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def arm_of(config: Mapping[str, Any]) -> str | None:
    """wandb.job_type, else the arm of revival.method (none -> baseline, synaptic_stripping -> stripping),
    from the revival registry, the same place the trainer takes the job_type from."""
    job_type = _get(config, "wandb", "job_type")
    if job_type:
        return str(job_type)
    method = _get(config, "revival", "method")
    if not method:
        return None
    from reviveformer.revival import arm_of_method  # imports torch: only when a run's config needs it

    return arm_of_method(str(method))


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
    if (v := _last(run.metrics, metric_keys.dead_ratio_key(site))) is not None:
        return v
    ratios = [r for d in layers if (r := _number(d.get("dead_ratio"))) is not None]
    return sum(ratios) / len(ratios) if ratios else None


def _capacity(run: RunData, key: str) -> float | None:
    # The metric at the highest step is logged after any revival at that step, so it counts newly pruned
    # weights; the liveness file is written before revival, so it is only the fallback.
    if (v := _last(run.metrics, metric_keys.capacity_key(key))) is not None:
        return v
    return _number(((run.liveness or {}).get("capacity") or {}).get(key))


def summarise(run: RunData, sites: Sequence[str] | None = None) -> dict[str, Any]:
    """One row of the comparison table; a value the run does not have is None.

    Keys: run, arm, activation, final_val_loss, best_val_loss, `dead_ratio/<site>` for each site (`sites`,
    default the run's own), alive_fraction, effective_params, effective_param_fraction, revived_units
    (summed over revivals), pruned_weights (last revival/pruned_total), tokens_per_s (median).
    """
    val = [v for _, v in _series(run.metrics, "val/loss")]
    revived = _series(run.metrics, metric_keys.revival_key("revived_units"))
    tokens = [v for _, v in _series(run.metrics, "train/tokens_per_s")]
    effective = _capacity(run, "effective_params")
    pruned = _last(run.metrics, metric_keys.revival_key("pruned_total"))
    row: dict[str, Any] = {
        "run": run.name,
        "arm": arm_of(run.config),
        "activation": _activation_of(run.config),
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(val) if val else None,
    }
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
    """Rows for all runs with the same columns: every site any run has (None where a run lacks it)."""
    sites = _site_order({s for run in runs for s in sites_of(run)})
    return [summarise(run, sites) for run in runs]


# ---------------------------------------------------------------------------------------------- seeds

# Config keys that say where or how a run was kept and logged, not what was trained: runs whose configs differ
# only in these and in train.seed are seeds of one arm. (wandb: all but job_type, which names the arm.)
_NOT_SETTINGS = {
    ("train", "seed"),
    ("train", "output_dir"),
    ("train", "resume"),
    ("train", "progress"),
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
    for key in (*_GROUPED[:2], *(f"dead_ratio/{s}" for s in sites), *_GROUPED[2:]):
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


# ---------------------------------------------------------------------------------------------- tables

MISSING = "-"


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _int(v: float) -> str:
    return f"{int(v):,}"


# key -> (header, formatter, numeric); dead_ratio/<site> columns are matched by prefix.
_COLUMNS: dict[str, tuple[str, Any, bool]] = {
    "run": ("run", str, False),
    "arm": ("arm", str, False),
    "activation": ("activation", str, False),
    "final_val_loss": ("final val loss", lambda v: f"{v:.4f}", True),
    "best_val_loss": ("best val loss", lambda v: f"{v:.4f}", True),
    "alive_fraction": ("alive MLP", _pct, True),
    "effective_params": ("effective params", _int, True),
    "effective_param_fraction": ("effective %", _pct, True),
    "revived_units": ("units revived", _int, True),
    "pruned_weights": ("weights pruned", _int, True),
    "tokens_per_s": ("tokens/s", lambda v: f"{v:,.0f}", True),
}


def _column(key: str) -> tuple[str, Any, bool]:
    if key.startswith("dead_ratio/"):
        return f"dead {key.split('/', 1)[1]}", _pct, True
    return _COLUMNS.get(key, (key, str, False))


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, formatted cells, numeric flags) of the rows; None becomes "-"."""
    keys = list(rows[0]) if rows else list(_COLUMNS)
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    cols = [_column(k) for k in keys]
    cells = [
        [MISSING if row.get(k) is None else fmt(row[k]) for k, (_, fmt, _) in zip(keys, cols, strict=True)]
        for row in rows
    ]
    return [c[0] for c in cols], cells, [c[2] for c in cols]


def _markdown(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(c) for c in cells)])


def _text(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a GitHub-flavoured Markdown table (numbers right-aligned)."""
    return _markdown(*table_cells(rows))


def render_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as plain aligned text for the console (numbers right-aligned)."""
    return _text(*table_cells(rows))


def _stat(key: str, stat: Mapping[str, Any] | None) -> str:
    """`mean +- sd` in the column's format (sd of a count with one decimal); the mean alone for one value."""
    if stat is None:
        return MISSING
    _, fmt, _ = _column(key)
    spread = (lambda v: f"{v:,.1f}") if fmt is _int else fmt
    return fmt(stat["mean"]) + ("" if stat["sd"] is None else f" ± {spread(stat['sd'])}")


def group_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of `group_row` rows: arm, n, activation, then mean +- sd columns."""
    keys = [k for k in rows[0] if k not in ("arm", "n", "seeds", "activation")] if rows else []
    headers = ["arm", "n", "activation", *(_column(k)[0] for k in keys)]
    cells = [
        [str(r["arm"]), str(r["n"]), str(r.get("activation") or MISSING), *(_stat(k, r.get(k)) for k in keys)]
        for r in rows
    ]
    return headers, cells, [False, True, False, *([True] * len(keys))]


def difference_cells(diffs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of `differences` rows."""
    if not diffs:
        return [], [], []
    pct = f"{diffs[0]['confidence']:.0%}"
    headers = [
        "arm",
        "n",
        f"{diffs[0]['reference']} n",
        "difference",
        f"{pct} interval (Welch)",
        "df",
        "paired n",
        "paired difference",
        f"{pct} interval (paired)",
    ]
    cells = []
    for d in diffs:
        interval = MISSING if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        paired = (
            MISSING if d.get("paired_low") is None else f"[{d['paired_low']:+.4f}, {d['paired_high']:+.4f}]"
        )
        cells.append(
            [
                str(d["arm"]),
                str(d["n"]),
                str(d["n_reference"]),
                MISSING if d["diff"] is None else f"{d['diff']:+.4f}",
                interval,
                MISSING if d["df"] is None else f"{d['df']:.1f}",
                str(d.get("paired_n", 0)),
                MISSING if d.get("paired_diff") is None else f"{d['paired_diff']:+.4f}",
                paired,
            ]
        )
    return headers, cells, [False, True, True, True, True, True, True, True, True]


# ---------------------------------------------------------------------------------------------- outputs


def _has_key(runs: Iterable[RunData], key: str) -> bool:
    return any(_number(row.get(key)) is not None for run in runs for row in run.metrics)


def _finite_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))}


def write_figures(runs: Sequence[RunData], out_dir: Path) -> dict[str, Path]:
    """One PNG per comparison figure that some run has data for; returns {figure name: path}."""
    # Non-finite values (a NaN loss) dropped: a NaN point would cut the line and hide the points after it.
    metrics = {run.name: [_finite_row(row) for row in run.metrics] for run in runs}
    figures: dict[str, Path] = {}
    if _has_key(runs, "val/loss"):
        figures["validation loss"] = plots.plot_runs_metric_over_training(
            metrics, "val/loss", out_dir / "val_loss.png", ylabel="validation loss", title="Validation loss"
        )
    sites = _site_order({s for run in runs for s in sites_of(run)})
    for site in sites:
        if _has_key(runs, metric_keys.dead_ratio_key(site)):
            figures[f"dead ratio over training: {site}"] = plots.plot_runs_metric_over_training(
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
            figures[f"dead ratio per layer at the end: {site}"] = plots.plot_runs_dead_ratio_per_layer(
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
    if _has_key(runs, "val/loss"):
        figures["validation loss over seeds"] = plots.plot_groups_band_over_training(
            metrics,
            "val/loss",
            out_dir / "val_loss_seeds.png",
            ylabel="validation loss",
            title="Validation loss (mean and sd over seeds)",
        )
    for site in _site_order({s for run in runs for s in sites_of(run)}):
        if _has_key(runs, metric_keys.dead_ratio_key(site)):
            figures[f"dead ratio over training over seeds: {site}"] = plots.plot_groups_band_over_training(
                metrics,
                metric_keys.dead_ratio_key(site),
                out_dir / f"dead_ratio_over_training_{site}_seeds.png",
                ylabel="dead ratio",
                title=f"Dead units over training: {site} (mean and sd over seeds)",
            )
    return figures


def _markdown_report(
    runs: Sequence[RunData],
    rows: Sequence[Mapping[str, Any]],
    figures: Mapping[str, Path],
    out_dir: Path,
    seeds: Mapping[str, Any] | None = None,
) -> str:
    lines = [
        "# Run comparison",
        "",
        render_markdown(rows),
        "",
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
    lines += ["## Runs", ""]
    lines += [f"- **{run.name}**: `{run.source}`" for run in runs]
    if figures:
        lines += ["", "## Figures", ""]
        for title, path in figures.items():
            rel = path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else path.as_posix()
            lines += [f"### {title[0].upper()}{title[1:]}", "", f"![{title}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def seed_summary(
    runs: Sequence[RunData], rows: Sequence[dict[str, Any]], baseline: str | None = None
) -> dict[str, Any] | None:
    """The arms over seeds, when some arm has 2 or more seeds: {"groups": group rows, "reference": label,
    "differences": to the reference in final val loss, "method"}. None when every arm has one run."""
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
    }


def write_comparison(
    runs: Sequence[RunData], out_dir: str | Path, baseline: str | None = None
) -> dict[str, Any]:
    """Table and figures of `runs` into `out_dir`: compare.md, compare.json and PNGs; with arms of 2 or more
    seeds also seeds.json (mean, sd, n per arm and the differences to the reference arm) and band figures.

    Returns {"rows", "markdown" (path), "json" (path), "figures" ({name: path}), "text" (console table),
    "seeds" (the seed summary or None)}.
    """
    if not runs:
        raise UserError("nothing to compare: no runs given")
    rows = summarise_all(runs)
    seeds = seed_summary(runs, rows, baseline)  # before anything is written: a bad --baseline writes nothing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(runs, out)
    text = render_text(rows)
    if seeds:
        figures.update(write_band_figures(group_seeds(runs, rows), out))
        (out / "seeds.json").write_text(json.dumps(seeds, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        text += "\n\narms over seeds (mean ± sd):\n" + _text(*group_cells(seeds["groups"]))
        if seeds["differences"]:
            text += (
                f"\n\nfinal val loss, difference to {seeds['reference']} (Welch and paired t intervals):\n"
                + _text(*difference_cells(seeds["differences"]))
            )
    md_path, json_path = out / "compare.md", out / "compare.json"
    md_path.write_text(_markdown_report(runs, rows, figures, out, seeds), encoding="utf-8")
    json_path.write_text(json.dumps(rows, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return {
        "rows": rows,
        "markdown": md_path,
        "json": json_path,
        "figures": figures,
        "text": text,
        "seeds": seeds,
    }


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, baseline: str | None = None
) -> dict[str, Any]:
    """Load run directories and write their comparison into `out_dir` (see `write_comparison`)."""
    return write_comparison(load_runs(run_dirs), out_dir, baseline)
