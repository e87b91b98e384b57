"""Where a run is in its training: (step, epoch, batches_in_epoch, task), with the step budget and the counters that
move with it. Saved in every checkpoint (`loop.training_state.PositionState`); `restore_position` there
rebuilds it from one.

An epoch has ended only when its epoch end (measurement, liveness json, revival) has run and `epoch` has moved
on: a position taken after an epoch's last batch but before its end resumes into that epoch end, and one taken
mid-epoch resumes into the rest of that epoch's data (docs/design.md, "Resuming"). Likewise a task has ended
only when its boundary (measurement, revival, switch to the next task's data) has run and `task` has moved on."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Position:
    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Epochs whose end has run."""
    batches_in_epoch: int = 0
    """Micro-batches of the current epoch this process has trained on."""
    batches_per_epoch: int = 0
    """Micro-batches of one process in an epoch of the current data (its training loader's length)."""
    bad_steps: int = 0
    """Optimizer steps skipped for a non-finite loss or gradient."""
    tokens_seen: int = 0
    """Training tokens over all processes."""
    step_budget: int | None = None
    """The step at which training stops early (train.max_steps, rescaled when the process count changed)."""
    task: int = 0
    """Tasks whose boundary has run (a task sequence's; 0 without one)."""
    task_train_loss: float = math.nan
    """The last train log's loss (the end-of-task training loss at a boundary, also after a resume there)."""

    def total_steps(
        self, batches_per_epoch: int, grad_accum: int, epochs: int, task_steps: int | None = None
    ) -> int:
        """The step at which training ends: the end of the last epoch (of the last task, `task_steps`, with a
        task sequence), or the step budget."""
        steps_per_epoch = math.ceil(batches_per_epoch / grad_accum)
        if task_steps is not None:
            to_end = task_steps
        elif self.epoch >= epochs:
            to_end = self.step
        else:
            left = math.ceil((batches_per_epoch - self.batches_in_epoch) / grad_accum)
            to_end = self.step + left + steps_per_epoch * (epochs - self.epoch - 1)
        return to_end if self.step_budget is None else min(self.step_budget, to_end)
