"""Reading runs for a comparison: local run directories and W&B groups, both turned into `RunData`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reviveformer import metric_keys
from reviveformer.errors import UserError
from reviveformer.run_files import read_metrics
from reviveformer.run_status import RunStatus, read_status

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
    status: RunStatus | None = None
    """The run folder's status.json (or legacy inference); None for a W&B run, whose end is not known here."""

    @property
    def complete(self) -> bool:
        """Whether the run reached its planned end; a W&B run (status unknown) counts as complete."""
        return self.status is None or self.status.complete


# ---------------------------------------------------------------------------------------------- loading


def _last_liveness_file(run_dir: Path) -> Path | None:
    """liveness/final.json (the measurement of the weights in final/) when the run wrote one; else the
    epoch_NNN.json with the highest epoch number (numeric, so epoch_1000 sorts after epoch_999)."""
    if (final := run_dir / "liveness" / "final.json").is_file():
        return final
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
    metrics = read_metrics(path / "metrics.jsonl")
    if liveness is None:
        # No epoch ended (or liveness was off): the last per-layer values logged during training stand in.
        liveness = liveness_from_rows(metrics)
    return RunData(
        name=name or path.resolve().name,
        config=config,
        metrics=metrics,
        liveness=liveness,
        source=str(path),
        status=read_status(path),
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
    return _dedupe(["/".join(p[-n:]) for p in parts])


def check_distinct(run_dirs: Sequence[str | Path]) -> None:
    """Refuse a run directory given twice (after resolving links and relative paths): counted twice it would
    be two seeds of one arm with identical values, a zero-width interval that says nothing."""
    seen: dict[Path, str | Path] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            same = f"{d}" if str(seen[key]) == str(d) else f"{seen[key]} and {d}"
            raise UserError(
                f"run directory {key} is given twice ({same}); give each run once (a run counted twice "
                "would be two identical seeds)"
            )
        seen[key] = d


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """`load_run` for each directory, labelled with `unique_names`; a directory given twice is refused."""
    if not run_dirs:
        raise UserError("no run directories given; pass one or more RUN_DIRs written by `reviveformer train`")
    check_distinct(run_dirs)
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
