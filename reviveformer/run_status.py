"""RUN_DIR/status.json: what state a run is in (running, finished, stopped, halted, preempted) and the step
of the weights in final/ (docs/design.md, "Run directory")."""

from __future__ import annotations

import json
from pathlib import Path

STATUS_FILE = "status.json"
STATES = ("running", "finished", "stopped", "halted", "preempted")


def read_status(run_dir: Path) -> dict | None:
    """The run's status, or None when the folder has none (a run from before status.json) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("state") in STATES else None


def write_status(
    run_dir: Path,
    state: str,
    step: int,
    epoch: int,
    reason: str | None = None,
    final_step: int | None = None,
) -> None:
    """Write status.json whole (a temporary file renamed over it); `final_step` None keeps the previous one."""
    assert state in STATES, state
    if final_step is None:
        final_step = (read_status(run_dir) or {}).get("final_step")
    data = {"state": state, "step": step, "epoch": epoch, "reason": reason, "final_step": final_step}
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)
