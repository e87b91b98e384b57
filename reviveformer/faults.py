"""A test hook: kill the process at a named phase of training, so that resume tests need no timing.

`REVIVEFORMER_FAULT=phase[:occurrence]` makes the `occurrence`-th (default 1st) arrival at `phase` end the
process at once with `os._exit(137)`, as SIGKILL would: no cleanup, no flush, no atexit.
`REVIVEFORMER_FAULT=phase:occurrence:SIGTERM` (or SIGINT) sends that signal to the process there instead, as a
scheduler's preemption would, and goes on; `...:SIGTERM@1` only in the process of rank 1 (`RANK`).
`REVIVEFORMER_FAULT=phase:occurrence:ENOSPC` (or EDQUOT) raises that OSError there instead, as a write to a full
disk would (`...:ENOSPC@1`: rank 1 only). Unset, it costs one dictionary lookup per call. Phases (where the
trainer and checkpoint code call `fault_point`):

- `setup`: the run built (data prepared, model built, a checkpoint restored), before it writes its folder;
- `mid_step`: after the backward pass of an optimizer step, before the update;
- `after_periodic_checkpoint`: right after a `train.checkpoint_every` checkpoint is complete;
- `epoch_end_measure`: inside the epoch-end measurement, before anything of it is logged or written;
- `after_revival`: after the epoch-end revival, before the epoch-end checkpoint;
- `task_end`: at a task boundary, before its measurement;
- `after_task_revival`: after the task boundary's revival (if any), before the switch to the next task's data;
- `task_start`: after the boundary's checkpoint, before the first step of the next task;
- `checkpoint_write`: while a checkpoint is written (state saved, marker not yet written, not renamed);
- `checkpoint_replace`: a step saved again (epoch end after a periodic save): the old folder removed, the
  complete new one not yet renamed;
- `final_write`: while final/ is written (saved under a temporary name, not yet renamed).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

ENV = "REVIVEFORMER_FAULT"
PHASES = (
    "setup",
    "mid_step",
    "after_periodic_checkpoint",
    "epoch_end_measure",
    "after_revival",
    "task_end",
    "after_task_revival",
    "task_start",
    "checkpoint_write",
    "checkpoint_replace",
    "final_write",
)
EXIT_KILLED = 137

_arrivals: dict[str, int] = {}


def fault_point(phase: str) -> None:
    """Count an arrival at `phase`; end the process here when REVIVEFORMER_FAULT names this arrival."""
    assert phase in PHASES, phase
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != phase:
        return
    nth, _, action = rest.partition(":")
    _arrivals[phase] = _arrivals.get(phase, 0) + 1
    if _arrivals[phase] != int(nth or 1):
        return
    if not action:
        _kill(f"{ENV}={spec}: killed at {phase}")
    what, _, rank = action.partition("@")
    if rank and os.environ.get("RANK", "0") != rank:
        return
    if what.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, what))
    else:  # ENOSPC, EDQUOT: the write of this phase fails as on a full disk
        code = getattr(errno, what)
        raise OSError(code, f"{os.strerror(code)} ({ENV}={spec})")


def _kill(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(EXIT_KILLED)
