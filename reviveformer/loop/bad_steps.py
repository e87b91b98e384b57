"""Optimizer steps with a non-finite loss or gradient: skipped on the device so that a NaN never reaches the
weights, counted, and the run halted once there are more than `train.max_bad_steps` of them (torchtitan's
train_step fails loudly on a non-finite loss).

No host sync per step: `check` returns the step's verdict as a device flag (the trainer hands it to the fused
AdamW as `found_inf`, which leaves weights and optimizer state as they were) and keeps the step's loss and
gradient norm on the device; `settle` reads every step kept since the last read in one copy, at the train log,
a checkpoint, a revival, an epoch end or the finish, and warns or halts there as the step itself used to (the
halt comes at that read, naming the step that crossed the limit)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from reviveformer import checkpoint as ckpt
from reviveformer.errors import TrainingHalted

log = logging.getLogger("reviveformer")


class BadSteps:
    def __init__(self, max_bad_steps: int, checkpoints_dir: Path) -> None:
        self.max_bad_steps = max_bad_steps
        self.checkpoints_dir = checkpoints_dir
        self.pending: list[tuple[int, torch.Tensor]] = []
        """Per optimizer step since the last read: (step, device tensor [loss, grad norm])."""

    def check(
        self, step: int, mean_loss: torch.Tensor, grad_norm: torch.Tensor, check_norm: bool
    ) -> torch.Tensor:
        """Keep optimizer step `step` (1-based) for the next read; return its verdict, a 0-dim bool device tensor
        (True: non-finite, skip the update), without reading it. `check_norm` False: a gradient scaler skips an
        inf-gradient step by itself, and only the loss is judged (as the scaler's own skips are not counted)."""
        values = torch.stack([mean_loss.detach().float(), grad_norm.detach().float()])
        self.pending.append((step, values))
        return ~torch.isfinite(values).all() if check_norm else ~torch.isfinite(values[0])

    def rows(self) -> torch.Tensor | None:
        """The kept steps' values as one flat device tensor (None: none kept), for the caller's single read."""
        return torch.cat([v for _, v in self.pending]) if self.pending else None

    def settle(self, values: list[float], count: int, check_norm: bool) -> int:
        """Account for the kept steps from their values read on the host (`rows()`, in order), when `count`
        were skipped before; warn for each skipped step and return the new count, or raise TrainingHalted at
        the first one past the limit."""
        steps, self.pending = [s for s, _ in self.pending], []
        for i, step in enumerate(steps):
            loss, norm = values[2 * i], values[2 * i + 1]
            if math.isfinite(loss) and (math.isfinite(norm) or not check_norm):
                continue
            msg = (
                f"non-finite loss or gradient at step {step} (loss {loss:.4g}, grad norm {norm:.4g}); the optimizer "
                "update was skipped"
            )
            count += 1
            if count > self.max_bad_steps:
                last = ckpt.find_resume_point(self.checkpoints_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
                raise TrainingHalted(
                    msg
                    + f". Stopping: {count} such step(s), train.max_bad_steps={self.max_bad_steps}; {kept}"
                )
            log.warning("%s (%d of train.max_bad_steps=%d)", msg, count, self.max_bad_steps)
        return count
