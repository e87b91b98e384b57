"""A run folder's `status.json`: what state the run is in, and which step the weights in `final/` are of.

The trainer's main process writes it (`write_status`) at the start and at every way a session ends; readers
(`compare`, `report`, `sweep`) read it here (`read_status`) and nowhere else, so "finished" means one thing:

    {"state": S, "step": int, "epoch": int, "reason": str | null, "final_step": int | null}

S is `running` (written at start; a run killed by SIGKILL stays `running`), `finished` (reached its planned end:
all epochs, or `train.max_steps`), `stopped` (an alert's stop action; final/ written), `halted` (non-finite
steps past the limit, exit 3; final/ not written by that session), `preempted` (SIGTERM/SIGINT: checkpoint
saved, exit 75; or SIGTERM during set-up, nothing of that session written), `interrupted` (a second Ctrl-C, or a
Ctrl-C during set-up: out at once, exit 130) or `no_space` (the device or quota holding the run was full, exit
74; its last complete checkpoint is intact). `final_step` is the step of the weights in `final/` (null while none was written); a session
that does not write final/ keeps the previous value, so a resumed run killed later still says which step its
old final/ is from.

A run folder from before status files (no status.json) counts as complete when it has `final/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reviveformer.errors import UserError
from reviveformer.run_files import atomic_write

STATUS_FILE = "status.json"
STATES = ("running", "finished", "stopped", "halted", "preempted", "interrupted", "no_space")
# What each state says in a sentence ("the run ...").
_SAYS = {
    "running": "was running at its last status (still running, or killed without a chance to say so)",
    "finished": "finished: it reached its planned end",
    "stopped": "was stopped by an alert before its planned end",
    "halted": "halted on non-finite losses before its planned end",
    "preempted": "was interrupted (SIGTERM/SIGINT) after saving a checkpoint; it can be resumed",
    "interrupted": "was interrupted at once (a second Ctrl-C) without saving; it resumes from its last checkpoint",
    "no_space": "stopped: no space was left on its device; it resumes from its last checkpoint",
}


@dataclass(frozen=True)
class RunStatus:
    """A run folder's status: read from status.json, or inferred for a folder from before status files."""

    state: str
    """One of STATES; "legacy" for a folder without status.json (then `complete` says whether final/ exists)."""
    step: int | None
    """The last step the status was written at (None for a legacy folder)."""
    epoch: int | None
    reason: str | None
    final_step: int | None
    """The step of the weights in final/, as the trainer recorded it (None: none written, or not recorded)."""
    has_final: bool
    """Whether final/ holds a model now."""

    @property
    def complete(self) -> bool:
        """Whether the run reached its planned end (legacy folders: whether final/ exists)."""
        return self.state == "finished" or (self.state == "legacy" and self.has_final)

    def short(self) -> str:
        """A table cell: `finished`, `halted at step 12`, `legacy (final/ present)`."""
        if self.state == "legacy":
            return "legacy (final/ present)" if self.has_final else "legacy (no final/)"
        return self.state if self.state == "finished" else f"{self.state} at step {self.step}"

    def sentence(self) -> str:
        """What the run did and what final/ holds, for a report."""
        if self.state == "legacy":
            head = "no status.json (a run from before status files)"
            if not self.has_final:
                return f"{head}; no final model"
            return f"{head}; final/ holds a model of a step it does not record"
        head = f"the run {_SAYS.get(self.state, self.state)}; last status at step {self.step}"
        if self.epoch is not None:
            head += f", epoch {self.epoch}"
        if self.reason:
            head += f" ({self.reason})"
        if not self.has_final:
            return f"{head}; no final model"
        if self.final_step is None:
            return f"{head}; final/ holds a model of a step not recorded"
        if self.state == "finished" and self.final_step == self.step:
            return f"{head}; final/ holds its weights at step {self.final_step}"
        return f"{head}; final/ holds the weights of step {self.final_step}, not of step {self.step}"


def _has_final(run_dir: Path) -> bool:
    # final/ appears by an atomic rename, so its config.json means a whole model is there.
    return (run_dir / "final" / "config.json").is_file()


def read_status(run_dir: str | Path) -> RunStatus:
    """The run folder's status; a folder without status.json is `legacy`. A status.json that is not this
    contract's shape is a UserError naming the file."""
    path = Path(run_dir) / STATUS_FILE
    has_final = _has_final(Path(run_dir))
    if not path.is_file():
        return RunStatus("legacy", None, None, None, None, has_final)
    expected = (
        '{"state": one of ' + ", ".join(STATES) + ', "step": int, "epoch": int, "reason": str|null, '
        '"final_step": int|null}, as written by `reviveformer train`'
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e}); expected {expected}") from e

    def is_int(v: object, nullable: bool = False) -> bool:
        return (v is None and nullable) or (isinstance(v, int) and not isinstance(v, bool))

    if not (
        isinstance(data, dict)
        and data.get("state") in STATES
        and is_int(data.get("step"))
        and is_int(data.get("epoch"))
        and (data.get("reason") is None or isinstance(data.get("reason"), str))
        and is_int(data.get("final_step"), nullable=True)
    ):
        raise UserError(f"{path}: holds {json.dumps(data)[:200]}; expected {expected}")
    return RunStatus(
        data["state"], data["step"], data["epoch"], data.get("reason"), data.get("final_step"), has_final
    )


def write_status(
    run_dir: Path,
    state: str,
    step: int,
    epoch: int,
    reason: str | None = None,
    final_step: int | None = None,
) -> None:
    """Write `run_dir/status.json` atomically (a temporary file renamed over it: a reader never sees half of
    it). `final_step=None` keeps the value already there: a session that did not write final/ leaves the
    record of the one that did."""
    if state not in STATES:
        raise ValueError(f"state={state!r} must be one of {', '.join(STATES)}")
    path = Path(run_dir) / STATUS_FILE
    if final_step is None and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("final_step")
        except (OSError, json.JSONDecodeError, AttributeError):
            old = None  # an unreadable old file records nothing worth keeping
        if isinstance(old, int) and not isinstance(old, bool):
            final_step = old
    data = {"state": state, "step": step, "epoch": epoch, "reason": reason, "final_step": final_step}
    atomic_write(path, json.dumps(data) + "\n")
