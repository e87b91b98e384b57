"""The train log, at the end of each `TrainWindow`: the window's loss, learning rate, gradient norm and
throughput, and the liveness monitor's counts of the same window, after which the monitor counts a new window.

The counts leave without a host sync: the monitor snapshots and zeroes them on the device, starts their sum
over processes and their copy to the host (`LivenessMonitor.snapshot`), and `LivenessLog` logs them under this
log's step when they are read, at the next moment that syncs anyway (the next train log at the latest; see
`reviveformer.loop.liveness_log`). Their alerts act then: one window late."""

from __future__ import annotations

import torch

from reviveformer import metric_keys
from reviveformer.liveness import LivenessMonitor, PendingCounts
from reviveformer.loop.liveness_log import LivenessLog
from reviveformer.loop.window import reaches_multiple
from reviveformer.revival import Reviver
from reviveformer.tracking import Tracking


class TrainLog:
    def __init__(
        self,
        tracking: Tracking,
        liveness_log: LivenessLog,
        monitor: LivenessMonitor | None,
        reviver: Reviver | None,
        log_every: int,
        frequency_histogram_every: int,
    ) -> None:
        self.tracking = tracking
        self.liveness_log = liveness_log
        self.monitor = monitor
        self.reviver = reviver
        """Its pruned weights (synaptic stripping) count as dead in the monitor's window."""
        self.log_every = log_every
        self.frequency_histogram_every = frequency_histogram_every

    def log(
        self,
        step: int,
        epoch: int,
        window: tuple[torch.Tensor, int, float],
        grad_norm: torch.Tensor,
        lr: float,
    ) -> set[str]:
        """Log the closed `window` (TrainWindow.take()) at `step` and close the monitor's; returns the actions
        of the alerts on the liveness windows read since the last log (the previous one's, at the latest)."""
        self.liveness_log.settle()  # the previous window's liveness row (an earlier step) goes first
        window_loss, window_steps, tokens_per_s = window
        metrics = {
            metric_keys.TRAIN_LOSS: window_loss.item() / max(window_steps, 1),
            metric_keys.TRAIN_LR: lr,
            metric_keys.TRAIN_GRAD_NORM: float(grad_norm),
            metric_keys.TRAIN_TOKENS_PER_S: tokens_per_s,
            metric_keys.TRAIN_EPOCH: epoch,
        }
        self.tracking.log(metrics, step=step)
        if self.monitor is not None:
            # arrays, not the per-unit report: that is built only where it is written (epoch end)
            due = reaches_multiple(step, self.log_every, self.frequency_histogram_every)
            self.liveness_log.defer(self._snapshot(), step, histograms=due)
        return self.liveness_log.take_actions()

    def _snapshot(self) -> PendingCounts:
        """The monitor's window, closed and on its way to the host, summed over processes."""
        masks = self.reviver.pruned_masks() if self.reviver is not None else None
        return self.monitor.snapshot(sum_processes=True, pruned_masks=masks)
