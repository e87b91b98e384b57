"""Resumable checkpoints: Accelerate's save_state plus reviveformer's own state, written atomically.

A checkpoint is written under `checkpoints/.tmp-step_XXXXXXXX` and renamed to `step_XXXXXXXX` only when
complete, so a run killed mid-write never resumes from a half-written one. The `COMPLETE` marker, written
last, is a manifest (step, process count, every file with its size and SHA-256): a checkpoint with a file
missing, cut short or changed, non-finite weights or a part that does not read back is damaged: skipped with a
warning naming the file when the resume point is chosen, refused when named by hand, never counted among the
checkpoints that rotation keeps. Our own state is tensors in safetensors and everything else in JSON: nothing
of ours is unpickled (Accelerate's random states are read back with torch's weights-only loader). The run's
tokenizer is saved beside them (Hugging Face files, `TOKENIZER_FILE` among them), so that a checkpoint folder
alone resumes with the run's own vocabulary.

The contract: docs/design.md, "Run directory", "Resuming".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reviveformer.errors import CheckpointError, TrainingHalted, disk_full
from reviveformer.faults import fault_point

log = logging.getLogger("reviveformer")

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_DIR = re.compile(r"^\.tmp-step_(\d{8})$")
MARKER = "COMPLETE"
STATE_JSON = "reviveformer_state.json"
STATE_TENSORS = "reviveformer_state.safetensors"
TOKENIZER_FILE = "tokenizer_config.json"
"""One of the tokenizer's files (save_pretrained writes it always); checkpoints from before hold none."""
HASH = "sha256"  # not the fastest, but `sha256sum FILE` checks a part by hand
LEGACY_PARTS = (STATE_JSON, STATE_TENSORS, "optimizer.bin", "random_states_0.pkl")
"""What every checkpoint holds; checked for a marker from before manifests (just the step number)."""


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


def file_hash(path: Path) -> str:
    h = hashlib.new(HASH)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, step: int, num_processes: int) -> None:
    parts = [p for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER]
    manifest = {
        "step": step,
        "num_processes": num_processes,
        "files": {p.name: p.stat().st_size for p in parts},
        # beside the sizes, not in place of them: a reader from before hashes still checks the sizes
        "hash": HASH,
        "hashes": {p.name: file_hash(p) for p in parts},
    }
    (directory / MARKER).write_text(json.dumps(manifest))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The marker's manifest; None for a marker from before manifests (just the step number) or one that is
    no manifest at all (`damage` tells which)."""
    manifest, _ = checked_manifest(directory)
    return manifest


def checked_manifest(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, problem) of the checkpoint's marker: the manifest when it is one this version writes, (None,
    None) for the marker from before manifests (the folder's step number alone), else (None, why). A manifest
    lists plain file names inside the folder only, each with its size; a hash only beside a size, so that no
    entry can make a check read outside the checkpoint or read for ever (`/dev/zero`, `../x`)."""
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError) as e:
        return None, f"{MARKER} does not read as JSON ({type(e).__name__})"
    if _is_int(data) and STEP_DIR.match(directory.name.removeprefix(".tmp-")) and data == _step(directory):
        return None, None
    if not isinstance(data, dict):
        return None, f"{MARKER} holds {type(data).__name__} {json.dumps(data)[:40]}, not a manifest"
    files, hashes = data.get("files"), data.get("hashes", {})
    if not isinstance(files, dict) or not all(_is_int(size) and size >= 0 for size in files.values()):
        return None, f'{MARKER}\'s "files" is not a mapping of file names to sizes'
    if not isinstance(hashes, dict) or not all(isinstance(digest, str) for digest in hashes.values()):
        return None, f'{MARKER}\'s "hashes" is not a mapping of file names to digests'
    if bad := [name for name in (*files, *hashes) if not _plain_name(name)]:
        return None, f"{MARKER} lists {bad[0]!r}, which is no file name inside the checkpoint"
    if unsized := [name for name in hashes if name not in files]:
        return None, f"{MARKER} lists a hash but no size for {unsized[0]!r}"
    return data, None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_name(name: str) -> bool:
    """A file name of the folder itself: no path, no `.` or `..`, not the marker."""
    return name not in ("", ".", "..", MARKER) and not any(c in name for c in "/\\\0")


def _regular_file(path: Path) -> bool:
    """A regular file, not a link to one (nor a device, FIFO or folder)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def save_checkpoint(
    accelerator, checkpoints_dir: Path, step: int, state: dict[str, Any], limit: int, tokenizer=None
) -> Path:
    """All processes call this (save_state gathers); the main process writes our state and the run's tokenizer
    (when given), and renames."""
    final = checkpoints_dir / step_dir_name(step)
    tmp = checkpoints_dir / f".tmp-{step_dir_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            write_state(tmp, state)
            if tokenizer is not None:  # before the manifest: its files are listed and hashed like the others
                tokenizer.save_pretrained(str(tmp))
            fault_point("checkpoint_write")
            write_manifest(tmp, step, accelerator.num_processes)
    except Exception as e:  # a full disk, say: the unfinished folder goes now, freeing the space it held
        full = disk_full(e, tmp)  # before the clean-up frees what the failed write filled
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if full is not None and full is not e:
            raise full from e
        raise
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (epoch end right after a periodic save)
            shutil.rmtree(final)  # killed from here to the rename: the complete tmp folder is found instead
            fault_point("checkpoint_replace")
        tmp.rename(final)
        prune(checkpoints_dir, limit, final)
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


def _step(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[1])


def prune(checkpoints_dir: Path, limit: int, saved: Path) -> None:
    """Keep `saved` (just written, so the newest good checkpoint) and the `limit - 1` newest good ones before
    it, and remove those before the oldest kept. A damaged checkpoint in between is neither counted nor
    removed (left to inspect); nor is one after `saved` (skipped by the resume as damaged, or past a
    `train.resume` folder given by hand), which the run replaces when it reaches that step. Counting a damaged
    newer one as kept used to remove the good checkpoint just written."""
    older = [p for p in list_complete(checkpoints_dir) if STEP_DIR.match(p.name) and _step(p) < _step(saved)]
    kept = 1
    while older and kept < limit and len(older) >= limit - kept + 1:  # checked only when some must go
        if checked_damage(older.pop()) is None:
            kept += 1
    if kept == limit:
        for p in older:
            shutil.rmtree(p, ignore_errors=True)
    for stale in checkpoints_dir.glob(".tmp-step_*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, naming the file(s); None for a good one.

    Every part the manifest lists must have its size and, where the manifest records them (checkpoints from
    before hashes have sizes only), its hash; then our state, Accelerate's random states and the weights must
    read back, the weights all finite."""
    manifest, problem = checked_manifest(path)
    if problem is not None:
        return problem
    if manifest is None:
        missing = [n for n in LEGACY_PARTS if not (path / n).is_file()]
        if missing:
            return f"{', '.join(missing)} missing"
    else:
        cut = [
            name
            for name, size in manifest["files"].items()
            if not _regular_file(path / name) or (path / name).stat().st_size != size
        ]
        if cut:
            return f"{', '.join(cut)} missing or cut short"
        hashes = manifest.get("hashes", {})
        changed = [name for name, digest in hashes.items() if file_hash(path / name) != digest]
        if changed:
            return f"{', '.join(changed)} changed since it was written ({manifest.get('hash', HASH)} differs)"
    try:
        read_state(path)
    except CheckpointError:
        return f"{STATE_JSON} or {STATE_TENSORS} does not read back"
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        return "no model*.safetensors"
    for w in weights:
        if why := _weights_damage(w):
            return why
    from accelerate.utils import load

    for rng in sorted(path.glob("random_states_*.pkl")):
        try:  # Accelerate's own loader: its load_state would skip an unreadable one without a word
            load(rng)
        except Exception as e:
            return f"{rng.name} does not read back ({type(e).__name__})"
    return None


def _weights_damage(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                t = f.get_tensor(key)  # one tensor at a time: the whole model is never in memory twice
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"{path.name} holds non-finite values ({key})"
    except Exception as e:
        return f"{path.name} does not read back ({type(e).__name__})"
    return None


_checked: dict[tuple[str, int, int], str | None] = {}
"""damage() of checkpoints checked in this process, by marker (path, inode, mtime): a checkpoint is hashed
once per process, not again at load and at every rotation. A step saved again has a new marker."""


def checked_damage(path: Path, afresh: bool = False) -> str | None:
    """damage(), remembered for this process (`afresh`: checked again all the same)."""
    try:
        st = (path / MARKER).stat()
    except OSError:
        return f"{MARKER} missing"
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns)
    if afresh or key not in _checked:
        _checked[key] = damage(path)
    return _checked[key]


def find_resume_point(checkpoints_dir: Path) -> Path | None:
    """The newest good checkpoint (checked afresh); a damaged one is skipped with a warning naming the file."""
    for path in reversed(list_complete(checkpoints_dir)):
        why = checked_damage(path, afresh=True)
        if why is None:
            return path
        log.warning("skipping damaged checkpoint %s (%s); trying an older one", path, why)
    return None


def refuse_damaged(path: Path) -> None:
    """A checkpoint named to resume from must be good: a damaged one is refused, naming why."""
    if why := checked_damage(path):
        raise CheckpointError(
            f"checkpoint {path} is damaged ({why}); give train.resume=auto to take the newest good "
            "checkpoint, or another checkpoints/step_XXXXXXXX directory"
        )


def load_checkpoint(accelerator, path: Path, compared: str = "") -> dict[str, Any]:
    """Restore the checkpoint at `path`; a damaged one is refused before anything is loaded. `compared`: what
    the resume compared before loading (its settings, process count, data), said when loading fails."""
    refuse_damaged(path)
    try:
        accelerator.load_state(str(path))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} could not be restored ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); "
            + (compared or "it may belong to another model size or number of processes")
        ) from None
    return read_state(path)
