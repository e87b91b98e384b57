"""Optimizer steps with a non-finite loss or gradient: skipped so that a NaN never reaches the weights,
counted, and the run halted once there are more than `train.max_bad_steps` of them (torchtitan's
train_step fails loudly on a non-finite loss)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from reviveformer import checkpoint as ckpt
from reviveformer.errors import TrainingHalted

log = logging.getLogger("reviveformer")


class BadSteps:
    def __init__(self, max_bad_steps: int, checkpoints_dir: Path) -> None:
        self.max_bad_steps = max_bad_steps
        self.checkpoints_dir = checkpoints_dir

    def skip(self, step: int, count: int, mean_loss: torch.Tensor, grad_norm: torch.Tensor) -> int:
        """Account for a skipped update at optimizer step `step` (1-based) when `count` were skipped before;
        returns the new count, or raises TrainingHalted past the limit."""
        msg = (
            f"non-finite loss or gradient at step {step} (loss {mean_loss.item():.4g}, "
            f"grad norm {float(grad_norm):.4g}); the optimizer update was skipped"
        )
        count += 1
        if count > self.max_bad_steps:
            last = ckpt.find_resume_point(self.checkpoints_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
            raise TrainingHalted(
                msg + f". Stopping: {count} such step(s), train.max_bad_steps={self.max_bad_steps}; {kept}"
            )
        log.warning("%s (%d of train.max_bad_steps=%d)", msg, count, self.max_bad_steps)
        return count
