"""What `ReviveformerCallback` keeps in a `transformers.Trainer` checkpoint, so that
`trainer.train(resume_from_checkpoint=...)` goes on exactly where the saved run was (docs/api.md, "Resuming").

The state is written at `on_save` (the Trainer has just written `checkpoint-N`) into `checkpoint-N/reviveformer/`:
the monitor's counters since the last drain (summed over processes, like a reviveformer checkpoint's), the
two host-side windows (the log window and the counts since the previous revival), the revival metrics waiting
for the next log, the reviver's and the alerts' state. The main process writes it, under a temporary name
renamed when complete; every process reads the same folder at a resume, so all of them restore the same state.

At `on_train_begin` of a resumed Trainer (its `global_step` above 0) the checkpoint is found by its
`trainer_state.json`: the one in `args.resume_from_checkpoint` or `args.output_dir/checkpoint-N` whose log
history is the Trainer's. A checkpoint with no callback state (saved without the callback, or cut off between
the Trainer's save and ours) is said once, and the callback starts clean.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from reviveformer import checkpoint as ckpt
from reviveformer.errors import CheckpointError
from reviveformer.liveness import LivenessCounts

log = logging.getLogger("reviveformer")

FOLDER = "reviveformer"
"""The callback's folder inside the Trainer's `checkpoint-N`."""
VERSION = 1


def _window_state(counts: LivenessCounts | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    return {
        part: {site: torch.from_numpy(np.ascontiguousarray(a)) for site, a in getattr(counts, part).items()}
        for part in ("fire_count", "abs_sum", "tokens")
    }


def _window_counts(state: dict[str, Any] | None, cfg) -> LivenessCounts | None:
    if state is None:
        return None
    parts = {part: {site: t.numpy().copy() for site, t in state[part].items()} for part in state}
    return LivenessCounts(cfg, parts["fire_count"], parts["abs_sum"], parts["tokens"])


def save(cb: Any, args, state, monitor_state: dict[str, Any]) -> None:
    """Write the callback `cb`'s state into the checkpoint the Trainer has just saved (main process only;
    `monitor_state` is the monitor's counters already summed over processes, a collective every process ran)."""
    if not state.is_world_process_zero:
        return
    folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    tmp, final = folder / f".{FOLDER}.tmp", folder / FOLDER
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ckpt.write_state(
        tmp,
        {
            "version": VERSION,
            "step": state.global_step,
            "monitor": monitor_state,
            "log_window": _window_state(cb._log_window.counts),
            "revival_window": _window_state(cb._revival_window.counts),
            "reviver": cb.reviver.state_dict() if cb.reviver is not None else None,
            "alerts": cb.alerts.state_dict(),
            # floats as JSON: repr round-trips them exactly (NaN included)
            "pending": json.dumps(cb._pending),
        },
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _resumed_checkpoint(args, state) -> Path | None:
    """The Trainer checkpoint this resumed run was loaded from: the candidate whose trainer_state.json holds
    this run's step and log history (None when none does)."""
    candidates = [getattr(args, "resume_from_checkpoint", None)]
    candidates.append(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
    for c in candidates:
        if not isinstance(c, str) or not os.path.isfile(os.path.join(c, "trainer_state.json")):
            continue
        saved = json.loads(Path(c, "trainer_state.json").read_text())
        if saved.get("global_step") == state.global_step and saved.get("log_history") == state.log_history:
            return Path(c)
    return None


def load(cb: Any, args, state) -> None:
    """At the start of a resumed Trainer run, restore `cb`'s state from its checkpoint, or say once that there
    is none to restore (the callback then starts clean: counts, revival bookkeeping and alerts from zero)."""
    if state.global_step == 0:
        return
    found = _resumed_checkpoint(args, state)
    if found is None or not (found / FOLDER).is_dir():
        where = f"in {found}" if found is not None else f"for step {state.global_step} in {args.output_dir}"
        log.warning(
            "ReviveformerCallback: the Trainer resumed at step %d, but no callback state was found %s (saved "
            "without the callback, or cut off before it was written); the liveness counts, revival bookkeeping "
            "and alerts start clean",
            state.global_step,
            where,
        )
        return
    saved = ckpt.read_state(found / FOLDER)
    if saved.get("version") != VERSION or saved.get("step") != state.global_step:
        raise CheckpointError(
            f"{found / FOLDER} holds callback state version {saved.get('version')} of step {saved.get('step')}; "
            f"this reviveformer reads version {VERSION}, and the Trainer resumed at step {state.global_step}"
        )
    cb.monitor.load_state_dict(saved["monitor"])
    if not state.is_world_process_zero:  # the saved counters are the sum over processes: counted once
        cb.monitor.reset()
    cb._log_window.counts = _window_counts(saved["log_window"], cb.liveness)
    cb._revival_window.counts = _window_counts(saved["revival_window"], cb.liveness)
    if cb.reviver is not None and saved["reviver"] is not None:
        cb.reviver.load_state_dict(saved["reviver"])
    cb.alerts.load_state_dict(saved["alerts"])
    cb._pending = json.loads(saved["pending"])
    log.info("ReviveformerCallback: resumed its state from %s", found / FOLDER)
