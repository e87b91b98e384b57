"""The grid of a sweep and its plan: `--grid`/`--activations`/`--seeds` parsed, every cell x seed named, and
each run's config loaded from the recipe, the user's overrides and its own."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keys a grid may not vary: the sweep sets them itself for every run.
RESERVED_KEYS = {
    "train.seed": "use --seeds 0,1,2",
    "train.output_dir": "the sweep names each run's directory; use --out for the sweep folder",
    "train.resume": "the sweep resumes its runs itself; set train.resume=... as an override for every run",
    "wandb.group": "all runs of a sweep share one group; set wandb.group=... as an override",
    "wandb.name": "the sweep names each run after its cell and seed",
}


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
    axes: list[tuple[str, list[str]]] = []
    items = list(grid)
    if activations is not None:
        items.append(f"model.activation={activations}")
    for item in items:
        key, values = _parse_axis(item)
        _check_axis_key(key, axes)
        axes.append((key, values))
    if activations is not None:
        from reviveformer.activations import validate_activation

        for name in axes[-1][1]:
            validate_activation(name, key="--activations")
    return axes


def _parse_axis(item: str) -> tuple[str, list[str]]:
    """One `KEY=V1,V2` as (key, [values])."""
    from reviveformer.errors import UserError

    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key:
        raise UserError(
            f"--grid {item!r} must look like section.key=V1,V2 (for example --grid revival.method=none,redo)"
        )
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise UserError(f"--grid {key}= needs at least one value, e.g. --grid {key}=A,B")
    if len(set(values)) != len(values):
        raise UserError(f"--grid {key} lists a value twice: {text}")
    return key, values


def _check_axis_key(key: str, axes: list[tuple[str, list[str]]]) -> None:
    """A grid key is not one the sweep sets itself, nor one already given."""
    from reviveformer.errors import UserError

    if key in RESERVED_KEYS:
        raise UserError(f"--grid {key}: a sweep sets {key} itself ({RESERVED_KEYS[key]})")
    if any(key == k for k, _ in axes):
        raise UserError(
            f"--grid {key} is given twice (--activations is --grid model.activation); give each "
            "key once with all its values"
        )


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
    share a last part, or where the last part is `seed` (`tasks.seed-0`: a bare `seed-0` reads as the training
    seed, which every label ends with)."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return [
        leaf if leaves.count(leaf) == 1 and leaf != "seed" else key
        for key, leaf in zip(keys, leaves, strict=True)
    ]


def plan_runs(axes: list[tuple[str, list[str]]], seeds: list[int], out: Path, group: str) -> list[PlannedRun]:
    """Every cell x seed, cells in the grid's order (the last key varying fastest), seeds innermost."""
    keys = [k for k, _ in axes]
    names = cell_names(keys)
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        cell = "__".join(f"{n}-{_safe(v)}" for n, v in zip(names, values, strict=True))
        pairs = list(zip(keys, values, strict=True))
        runs += [_planned_run(cell, pairs, seed, out, group) for seed in seeds]
    return runs


def _planned_run(cell: str, pairs: list[tuple[str, str]], seed: int, out: Path, group: str) -> PlannedRun:
    label = f"{cell}__seed-{seed}" if cell else f"seed-{seed}"
    run_dir = out / label
    overrides = [
        *(f"{k}={v}" for k, v in pairs),
        f"train.seed={seed}",
        f"train.output_dir={run_dir}",
        f"wandb.group={group}",
        f"wandb.name={out.name}-{label}",
    ]
    if cell:
        overrides.append(f"wandb.job_type={cell}")  # one arm per cell
    return PlannedRun(
        label=label, cell=cell, seed=seed, run_dir=run_dir, values=list(pairs), overrides=overrides
    )


def run_configs(recipe: str, overrides: list[str], plan: list[PlannedRun]) -> list[Any]:
    """Every run's config, loaded and checked before the first one trains: the recipe, the user's
    overrides, then the run's own, with the cell's values and seed added to the W&B tags."""
    from reviveformer.config import load_config
    from reviveformer.run_checks import check_run_inputs

    user_keys = {o.split("=", 1)[0] for o in overrides}
    configs = []
    for r in plan:
        extra = list(r.overrides)
        if "wandb.job_type" in user_keys:  # the user's own job_type wins over the cell's
            extra = [o for o in extra if not o.startswith("wandb.job_type=")]
        if "train.resume" not in user_keys:
            extra.append("train.resume=auto")  # re-running a sweep finishes what is missing
        cfg = load_config(recipe, [*overrides, *extra])
        check_run_inputs(cfg)
        cfg.wandb.tags = [*cfg.wandb.tags, *(f"{k}:{v}" for k, v in r.values), f"seed:{r.seed}"]
        configs.append(cfg)
    return configs
