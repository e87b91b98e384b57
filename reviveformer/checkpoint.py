"""Resumable checkpoints: Accelerate's save_state plus reviveformer's own state, written atomically.

A checkpoint is written under `checkpoints/.tmp-step_XXXXXXXX` and renamed to `step_XXXXXXXX` only when
complete, so a run killed mid-write never resumes from a half-written one. The `COMPLETE` marker, written
last, is a manifest (step, process count, every file with its size): a checkpoint with a file missing or cut
short is treated as corrupt, not as one of another model size. Our own state is tensors in safetensors and
everything else in JSON: nothing is unpickled.

The contract: docs/design.md, "Run directory", "Resuming".
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reviveformer.errors import CheckpointError, TrainingHalted
from reviveformer.faults import fault_point

log = logging.getLogger("reviveformer")

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_DIR = re.compile(r"^\.tmp-step_(\d{8})$")
MARKER = "COMPLETE"
STATE_JSON = "reviveformer_state.json"
STATE_TENSORS = "reviveformer_state.safetensors"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors out of a nested state into `tensors` (dotted keys); return the JSON-able rest."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"state keys under '{prefix}' must be str or int")
        return {
            "__dict__": [
                [k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at '{prefix}'")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def write_state(directory: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    rest = _flatten(state, "", tensors)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(rest))


def read_state(directory: Path) -> dict[str, Any]:
    try:
        tensors = load_file(str(directory / STATE_TENSORS))
        rest = json.loads((directory / STATE_JSON).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory} is unreadable ({type(e).__name__}: {e})") from None
    return _unflatten(rest, tensors)


def check_finite_weights(model, what: str) -> None:
    """Refuse to write non-finite weights: a checkpoint or final model must always be a good one to go back to."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingHalted(
            f"{len(bad)} weight tensor(s) hold non-finite values (first: {bad[0]}); {what} was not "
            "written, the last good checkpoint is kept"
        )


def write_manifest(directory: Path, step: int, num_processes: int) -> None:
    files = {
        p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER
    }
    (directory / MARKER).write_text(
        json.dumps({"step": step, "num_processes": num_processes, "files": files})
    )


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The marker's manifest; None for a marker from before manifests (just the step number)."""
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_checkpoint(accelerator, checkpoints_dir: Path, step: int, state: dict[str, Any], limit: int) -> Path:
    """All processes call this (save_state gathers); the main process writes our state and renames."""
    final = checkpoints_dir / step_dir_name(step)
    tmp = checkpoints_dir / f".tmp-{step_dir_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        write_state(tmp, state)
        fault_point("checkpoint_write")
        write_manifest(tmp, step, accelerator.num_processes)
        if final.exists():  # the same step saved again (epoch end right after a periodic save)
            shutil.rmtree(final)  # killed from here to the rename: the complete tmp folder is found instead
            fault_point("checkpoint_replace")
        tmp.rename(final)
        prune(checkpoints_dir, limit)
    accelerator.wait_for_everyone()
    return final


def list_complete(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A temporary folder whose marker (written last) is in place is
    complete too: a run killed between saving a step again (epoch end after a periodic save) and the
    rename has only that one."""
    if not checkpoints_dir.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for p in checkpoints_dir.iterdir():
        m = STEP_DIR.match(p.name) or TMP_DIR.match(p.name)
        if m and (p / MARKER).is_file() and (int(m.group(1)) not in by_step or STEP_DIR.match(p.name)):
            by_step[int(m.group(1))] = p
    return [by_step[s] for s in sorted(by_step)]


def prune(checkpoints_dir: Path, limit: int) -> None:
    for old in [p for p in list_complete(checkpoints_dir) if STEP_DIR.match(p.name)][:-limit]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_dir.glob(".tmp-step_*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)


def missing_parts(path: Path) -> list[str]:
    """Files the manifest lists that are absent or of another size (for an old marker: the parts every
    checkpoint has)."""
    manifest = read_manifest(path)
    if manifest is None:
        needed = [STATE_JSON, STATE_TENSORS, "optimizer.bin", "random_states_0.pkl"]
        return [n for n in needed if not (path / n).is_file()]
    return [
        name
        for name, size in manifest["files"].items()
        if not (path / name).is_file() or (path / name).stat().st_size != size
    ]


def is_loadable(path: Path) -> bool:
    """A cheap integrity check: the marker, every part it lists, our state and the model weights read back."""
    try:
        if missing_parts(path):
            return False
        read_state(path)
        from safetensors import safe_open

        weights = sorted(path.glob("model*.safetensors"))
        if not weights:
            return False
        for w in weights:
            with safe_open(str(w), framework="pt") as f:
                list(f.keys())
        return (path / MARKER).is_file()
    except Exception:
        return False


def find_resume_point(checkpoints_dir: Path) -> Path | None:
    """The newest complete and readable checkpoint; a corrupt one is skipped with a warning naming it."""
    for path in reversed(list_complete(checkpoints_dir)):
        if is_loadable(path):
            return path
        missing = missing_parts(path)
        why = f"{', '.join(missing)} missing or cut short" if missing else "it does not read back"
        log.warning("skipping corrupt checkpoint %s (%s); trying an older one", path, why)
    return None


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    try:
        accelerator.load_state(str(path))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} could not be restored ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it may belong to another model size "
            "or number of processes"
        ) from None
    return read_state(path)
