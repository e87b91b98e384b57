"""The end of a task in a task sequence (`tasks.TaskSequence`), at its last step: the task's held-out loss
with a fresh liveness window, the per-task row (`task/*` and the liveness ratios) and `liveness/task_XXX.json`,
and the figures (a task sequence draws them here, not at its epoch ends). It returns the report to revive
from: the trainer revives (`revival.every=task`), switches to the next task's data and checkpoints after it."""

from __future__ import annotations

from pathlib import Path

import torch

from reviveformer import metric_keys
from reviveformer.evaluation import Measurement
from reviveformer.faults import fault_point
from reviveformer.liveness import LivenessReport
from reviveformer.loop.epoch_end import EpochEnd, write_json
from reviveformer.loop.liveness_log import LivenessLog, site_dormant_ratios
from reviveformer.loop.validator import Validator
from reviveformer.tracking import Tracking


def weight_norm(params: list[torch.Tensor]) -> float:
    """L2 norm of all trainable weights (the same on every process)."""
    squares = [p.detach().float().pow(2).sum() for p in params]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


class TaskEnd:
    def __init__(
        self,
        run_dir: Path,
        is_main: bool,
        measurement: Measurement,
        validator: Validator,
        tracking: Tracking,
        liveness_log: LivenessLog,
        figures: EpochEnd | None,
    ) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.measurement = measurement
        self.validator = validator
        self.tracking = tracking
        self.liveness_log = liveness_log
        self.figures = figures
        """The epoch end's figures, drawn at each boundary (None: `train.plots` off)."""

    def run(
        self, task: int, step: int, train_loss: float, params: list[torch.Tensor]
    ) -> tuple[LivenessReport | None, set[str]]:
        """The end of task `task` (its data still the current one) at optimizer step `step`, its last train
        log's loss `train_loss`; returns its liveness report (None without a monitor) and the alert actions
        it raised."""
        fault_point("task_end")
        val, report = self.measurement.measure()
        self.validator.record(val, step, logged=False)
        row = {
            metric_keys.TASK_INDEX: task,
            metric_keys.TASK_TRAIN_LOSS: train_loss,
            metric_keys.TASK_VAL_LOSS: val[metric_keys.VAL_LOSS],
            metric_keys.TASK_WEIGHT_NORM: weight_norm(params),
        }
        if report is None:
            self.tracking.log(row, step=step)
            return None, set()
        row.update(site_dormant_ratios(report))
        actions = self.liveness_log.log(report, step, when=f"end of task {task}", extra=row)
        if self.is_main:
            data = report.to_json()
            write_json(self.run_dir / "liveness" / f"task_{task:03d}.json", data)
            if self.figures is not None:
                self.figures.draw(data, step)
        return report, actions
