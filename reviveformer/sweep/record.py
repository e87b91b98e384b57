"""The sweep folder's record, sweep.json: what defines the sweep (written before the first run trains, and
compared on a re-run into the folder) and, once the runs are done, their summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reviveformer.run_files import atomic_write

SWEEP_FILE = "sweep.json"


def sweep_definition(
    recipe: str, overrides: list[str], axes: list[tuple[str, list[str]]], seeds: list[int], base: Any
) -> dict[str, Any]:
    """What defines a sweep, as recorded in sweep.json's "definition": the recipe and overrides as given, the
    grid, the seeds, and `settings`: the resolved config of every run before the grid and seed are applied,
    flattened, without the keys that do not change what is trained (directories, W&B names, progress)."""
    from reviveformer.compare import settings
    from reviveformer.config import resolve_recipe, to_dict

    return {
        "recipe": str(resolve_recipe(recipe).resolve()),  # a built-in recipe's name as the file it names
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


def read_record(out: Path) -> dict[str, Any]:
    """A sweep folder's sweep.json; {} where there is none."""
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

    old = read_record(out).get("definition")
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
    data = {**read_record(out), "definition": definition}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SWEEP_FILE, json.dumps(data, indent=1) + "\n")


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """Replace sweep.json by the definition already recorded there and the sweep's summary (grid, seeds, runs,
    cells, per-layer dead ratios)."""
    definition = read_record(out).get("definition")
    (out / SWEEP_FILE).write_text(
        json.dumps({**({"definition": definition} if definition is not None else {}), **summary}, indent=1)
    )
