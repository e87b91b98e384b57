"""`reviveformer sweep RECIPE.yaml --grid KEY=V1,V2 [--grid ...] --seeds 0,1,2 [key=value ...]`: every cell of
a grid, for every seed, then a comparison that groups the seeds of each cell.

Each run (cell x seed) has its own run directory under the sweep folder, named after its cell and seed
(`activation-relu__seed-0`); all share one W&B group, and each cell is one arm (its W&B job_type).
`--activations relu,gelu` is shorthand for `--grid model.activation=relu,gelu`. Re-running the same command
continues a sweep: finished runs (status.json `finished`; in a folder from before status files, a `final/`
model) are kept as they are, an interrupted one resumes from its last checkpoint (`train.resume=auto`), the
rest start. The sweep folder's sweep.json records what defines the sweep (recipe, overrides, grid, seeds, the
resolved settings); a re-run into it that differs is refused before anything starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "train every cell of a grid (e.g. activations, revival methods) for every seed, then compare them"

# Keys a grid may not vary: the sweep sets them itself for every run.
RESERVED_KEYS = {
    "train.seed": "use --seeds 0,1,2",
    "train.output_dir": "the sweep names each run's directory; use --out for the sweep folder",
    "train.resume": "the sweep resumes its runs itself; set train.resume=... as an override for every run",
    "wandb.group": "all runs of a sweep share one group; set wandb.group=... as an override",
    "wandb.name": "the sweep names each run after its cell and seed",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe of every run")
    p.add_argument("overrides", nargs="*", help="overrides for every run, e.g. train.max_steps=200")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values (repeat for more keys: every combination is a cell)",
    )
    p.add_argument("--activations", help="shorthand for --grid model.activation=NAMES, e.g. relu,gelu,silu")
    p.add_argument(
        "--seeds", help="comma-separated train.seed values run for every cell (default: the recipe's)"
    )
    p.add_argument("--out", help="sweep folder (default: sweep/ beside the recipe's train.output_dir)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="draw the per-layer chart at another firing threshold, re-measured on each run's final "
        "model (no re-training)",
    )


@dataclass
class PlannedRun:
    """One run of the sweep: a cell of the grid and a seed."""

    label: str
    """Name of the run directory and W&B run name suffix (`activation-relu__seed-0`)."""
    cell: str
    """The cell's label (`activation-relu`), the arm it is compared under; "" without a grid."""
    seed: int
    run_dir: Path
    values: list[tuple[str, str]] = field(default_factory=list)
    """The cell's (key, value) pairs."""
    overrides: list[str] = field(default_factory=list)
    """Overrides of this run on top of the user's (grid values, seed, directory, W&B names)."""


def parse_grid(grid: list[str], activations: str | None) -> list[tuple[str, list[str]]]:
    """`--grid KEY=V1,V2` options (and `--activations`) as [(key, [values])], in the order given."""
    from reviveformer.errors import UserError

    axes: list[tuple[str, list[str]]] = []
    items = list(grid)
    if activations is not None:
        items.append(f"model.activation={activations}")
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise UserError(
                f"--grid {item!r} must look like section.key=V1,V2 (for example "
                "--grid revival.method=none,redo)"
            )
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise UserError(f"--grid {key}= needs at least one value, e.g. --grid {key}=A,B")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {key} lists a value twice: {text}")
        if key in RESERVED_KEYS:
            raise UserError(f"--grid {key}: a sweep sets {key} itself ({RESERVED_KEYS[key]})")
        if any(key == k for k, _ in axes):
            raise UserError(
                f"--grid {key} is given twice (--activations is --grid model.activation); give each "
                "key once with all its values"
            )
        axes.append((key, values))
    if activations is not None:
        from reviveformer.activations import validate_activation

        for name in axes[-1][1]:
            validate_activation(name, key="--activations")
    return axes


def parse_seeds(text: str | None, default: int) -> list[int]:
    """`--seeds 0,1,2` as [0, 1, 2]; the recipe's own seed when not given."""
    from reviveformer.errors import UserError

    if text is None:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r} must be comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} must list at least one seed, each once, e.g. --seeds 0,1,2")
    return seeds


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def cell_names(keys: list[str]) -> list[str]:
    """The name each grid key goes by in labels: its last part (`activation`), or the whole key where two keys
    share a last part."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)]


def plan_runs(axes: list[tuple[str, list[str]]], seeds: list[int], out: Path, group: str) -> list[PlannedRun]:
    """Every cell x seed, cells in the grid's order (the last key varying fastest), seeds innermost."""
    keys = [k for k, _ in axes]
    names = cell_names(keys)
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        cell = "__".join(f"{n}-{_safe(v)}" for n, v in zip(names, values, strict=True))
        for seed in seeds:
            label = f"{cell}__seed-{seed}" if cell else f"seed-{seed}"
            run_dir = out / label
            overrides = [
                *(f"{k}={v}" for k, v in zip(keys, values, strict=True)),
                f"train.seed={seed}",
                f"train.output_dir={run_dir}",
                f"wandb.group={group}",
                f"wandb.name={out.name}-{label}",
            ]
            if cell:
                overrides.append(f"wandb.job_type={cell}")  # one arm per cell
            runs.append(
                PlannedRun(
                    label=label,
                    cell=cell,
                    seed=seed,
                    run_dir=run_dir,
                    values=list(zip(keys, values, strict=True)),
                    overrides=overrides,
                )
            )
    return runs


def is_finished(run_dir: Path) -> bool:
    """A run that reached its planned end (status.json says finished; a run folder from before status files:
    its final/ is written). A run killed or interrupted after an earlier final/ is not finished: it resumes."""
    from reviveformer.run_status import read_status

    status = read_status(run_dir)
    return status.complete and status.has_final  # a finished run whose final/ is gone has nothing to keep


def restart_unresumable(run_dir: Path) -> None:
    """A run of this sweep killed before its first complete checkpoint cannot be resumed, and `train` refuses
    to start afresh on top of it: the sweep owns the folder, so it clears it and the run starts again."""
    from reviveformer.checkpoint import find_resume_point

    if (run_dir / "config.yaml").is_file() and find_resume_point(run_dir / "checkpoints") is None:
        print(
            f"sweep: {run_dir} has no complete checkpoint to resume from; starting that run again", flush=True
        )
        shutil.rmtree(run_dir)


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.yaml as plain YAML: never through load_config, which would import a plug-in
    revival.method it names (reading a run folder must not run its code)."""
    import yaml

    from reviveformer.errors import UserError

    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read it as YAML ({e}); expected a run's config.yaml") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds {type(data).__name__}, not a mapping; expected a run's config.yaml")
    return data


def check_finished_run(run: PlannedRun, cfg: Any, keys: list[str]) -> None:
    """A finished run is kept only if it is this run: the same values of the keys the sweep sets."""
    from reviveformer.config import to_dict
    from reviveformer.errors import UserError

    saved, planned = _saved_config(run.run_dir), to_dict(cfg)
    for key in keys:
        try:
            old = _value(saved, key)
        except AttributeError:
            old = None  # a section missing from an old config.yaml: it differs from any planned value
        new = _value(planned, key)
        if old != new:
            raise UserError(
                f"{run.run_dir} holds a finished run with {key}={old!r}, but this sweep's run there has {key}={new!r}; "
                "give another --out, or remove that directory to train it again (nothing was changed)"
            )


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from reviveformer.config import load_config
    from reviveformer.errors import UserError
    from reviveformer.paths import check_out_dir
    from reviveformer.trainer import train

    if args.threshold is not None and args.threshold < 0:
        raise UserError(f"--threshold={args.threshold} must be >= 0")
    axes = parse_grid(args.grid, args.activations)
    base = load_config(args.recipe, args.overrides)  # validates the recipe and overrides once, up front
    if not base.liveness.enabled:
        # Refused here, on every process, before any training: the summary needs each run's liveness.
        raise UserError(
            "sweep needs liveness.enabled=true: it compares the runs' dead ratios (remove the "
            "liveness.enabled=false override, or use `reviveformer train` for single runs)"
        )
    seeds = parse_seeds(args.seeds, base.train.seed)
    out = check_out_dir(args.out or Path(base.train.output_dir).parent / "sweep", "sweep folder")
    group = base.wandb.group or f"sweep-{Path(args.recipe).stem}"
    user_keys = {o.split("=", 1)[0] for o in args.overrides}
    plan = plan_runs(axes, seeds, out, group)
    # Every run's config is loaded (and so validated) before the first one trains.
    configs = []
    for r in plan:
        extra = list(r.overrides)
        if "wandb.job_type" in user_keys:  # the user's own job_type wins over the cell's
            extra = [o for o in extra if not o.startswith("wandb.job_type=")]
        if "train.resume" not in user_keys:
            extra.append("train.resume=auto")  # re-running a sweep finishes what is missing
        cfg = load_config(args.recipe, [*args.overrides, *extra])
        cfg.wandb.tags = [*cfg.wandb.tags, *(f"{k}:{v}" for k, v in r.values), f"seed:{r.seed}"]
        configs.append(cfg)
    # A sweep folder holds one sweep: a re-run that would train other runs is refused before anything starts.
    definition = sweep_definition(args.recipe, args.overrides, axes, seeds, base)
    check_definition(out, definition)
    # Decided before any training, so every process skips the same runs.
    finished = [is_finished(r.run_dir) for r in plan]
    for r, cfg, done in zip(plan, configs, finished, strict=True):
        if done:
            check_finished_run(r, cfg, [k for k, _ in axes] + ["train.seed"])
    # The trainer's Accelerator reads ACCELERATE_USE_CPU; a PartialState made first must too, or a CPU launch
    # with N processes would set itself up as N single processes.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.is_main_process:
        write_definition(out, definition)
    for r, cfg, done in zip(plan, configs, finished, strict=True):
        if state.is_main_process:
            print(f"sweep: {r.label}" + (" is finished; kept" if done else ""), flush=True)
            if not done and cfg.train.resume == "auto":
                restart_unresumable(r.run_dir)
        state.wait_for_everyone()
        if not done:
            train(cfg, keep_process_group=True)
    # Read (or re-measured) on every process: an error raised on one alone would leave the others waiting.
    liveness = {r.label: _last_liveness(r.run_dir) for r in plan}
    if args.threshold is not None:
        liveness = _remeasure({r.label: r.run_dir for r in plan}, args.threshold)
    if state.is_main_process:
        summarise_sweep(plan, axes, seeds, out, liveness, args.threshold, base.wandb, group)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


SWEEP_FILE = "sweep.json"


def sweep_definition(
    recipe: str, overrides: list[str], axes: list[tuple[str, list[str]]], seeds: list[int], base: Any
) -> dict[str, Any]:
    """What defines a sweep, as recorded in sweep.json's "definition": the recipe and overrides as given, the
    grid, the seeds, and `settings`: the resolved config of every run before the grid and seed are applied,
    flattened, without the keys that do not change what is trained (directories, W&B names, progress)."""
    from reviveformer.compare import settings
    from reviveformer.config import to_dict

    return {
        "recipe": str(Path(recipe).resolve()),
        "overrides": list(overrides),
        "grid": {k: list(v) for k, v in axes},
        "seeds": list(seeds),
        "settings": _flatten(settings(to_dict(base))),
    }


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_sweep_file(out: Path) -> dict[str, Any]:
    from reviveformer.errors import UserError

    path = out / SWEEP_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e}); expected the sweep.json a sweep wrote") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds {type(data).__name__}, not a mapping; expected a sweep's sweep.json")
    return data


def definition_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two sweep definitions, one phrase each (`train.lr: 0.001 before, 0.0005 now`).
    More seeds than before, the earlier ones all kept, continue the same sweep (a study adds seeds as time
    allows): not a difference."""
    found = []
    for part in ("grid", "seeds"):
        was, now = old.get(part), new.get(part)
        grown = part == "seeds" and isinstance(was, list) and isinstance(now, list) and set(was) <= set(now)
        if was != now and not grown:
            found.append(f"{part}: {json.dumps(was)} before, {json.dumps(now)} now")
    before, now = old.get("settings") or {}, new.get("settings") or {}
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            was = json.dumps(before.get(key)) if key in before else "unset"
            found.append(f"{key}: {was} before, {json.dumps(now.get(key)) if key in now else 'unset'} now")
    return found


def check_definition(out: Path, definition: dict[str, Any]) -> None:
    """Refuse to run into a sweep folder recorded for another sweep (other grid, seeds, or settings from the
    recipe and overrides): its finished runs would be reported as this sweep's. The same sweep again, with
    more seeds, or a folder without a record (new, or from before records), passes."""
    from reviveformer.errors import UserError

    old = _read_sweep_file(out).get("definition")
    if not isinstance(old, dict):
        return
    differ = definition_differences(old, definition)
    if differ:
        raise UserError(
            f"{out} holds another sweep ({out / SWEEP_FILE}): {'; '.join(differ)}. Give another --out for "
            "this sweep, or the same recipe, overrides, grid and seeds to continue that one (nothing was "
            "changed)"
        )


def write_definition(out: Path, definition: dict[str, Any]) -> None:
    """Record the sweep's definition in sweep.json (atomically, keeping a summary already there)."""
    from reviveformer.run_files import atomic_write

    data = {**_read_sweep_file(out), "definition": definition}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SWEEP_FILE, json.dumps(data, indent=1) + "\n")


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
    from reviveformer.compare import compare_runs, difference_cells, group_cells, table_cells
    from reviveformer.figures import plot_runs_dead_ratio_per_layer
    from reviveformer.sites import site_names

    per_cell = _mean_liveness_per_cell(plan, liveness)
    out.mkdir(parents=True, exist_ok=True)
    sites = [s for s in site_names() if any(s in v["sites"] for v in per_cell.values())]
    suffix = f" (threshold {threshold:g})" if threshold is not None else ""
    charts = [
        plot_runs_dead_ratio_per_layer(
            per_cell,
            site,
            out / f"dead_ratio_per_layer_{site}.png",
            title=f"Dead units per layer, mean over seeds: {site}{suffix}",
        )
        for site in sites
    ]
    result = compare_runs([str(r.run_dir) for r in plan], out / "compare")
    definition = _read_sweep_file(out).get("definition")
    (out / SWEEP_FILE).write_text(
        json.dumps(
            {
                **({"definition": definition} if definition is not None else {}),
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
            indent=1,
        )
    )
    print(result["text"])
    print(f"charts: {', '.join(str(c) for c in charts)}")
    print(f"table: {result['markdown']}")
    if wandb_cfg is not None:
        from reviveformer.tracking import log_summary_run

        figures = {f"sweep/{Path(path).stem}": path for path in result["figures"].values()}
        figures.update({f"sweep/{Path(c).stem}": c for c in charts})
        tables = {"sweep/runs": table_cells(result["rows"])[:2]}
        if result["seeds"]:
            tables["sweep/arms_over_seeds"] = group_cells(result["seeds"]["groups"])[:2]
            if result["seeds"]["differences"]:
                tables["sweep/differences"] = difference_cells(result["seeds"]["differences"])[:2]
        log_summary_run(wandb_cfg, out, f"{out.name}-summary", group or out.name, figures, tables)


def _last_liveness(run_dir: Path) -> dict:
    from reviveformer.compare import load_run

    liveness = load_run(run_dir).liveness
    if liveness is None:
        from reviveformer.errors import UserError

        raise UserError(f"{run_dir} has no liveness measurement; re-run it with liveness.enabled=true")
    return liveness


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
