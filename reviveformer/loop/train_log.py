"""The train log, at the end of each `TrainWindow`: the window's loss, learning rate, gradient norm and
throughput, then the liveness monitor's counts of the same window (metrics and alerts through `LivenessLog`,
per-unit frequency histograms at their own lower cadence), after which the monitor counts a new window."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reviveformer.liveness import LivenessCounts, LivenessMonitor
from reviveformer.loop.liveness_log import LivenessLog
from reviveformer.loop.window import reaches_multiple
from reviveformer.tracking import Tracking


class TrainLog:
    def __init__(
        self,
        tracking: Tracking,
        liveness_log: LivenessLog,
        monitor: LivenessMonitor | None,
        counts: Callable[[], LivenessCounts],
        log_every: int,
        frequency_histogram_every: int,
    ) -> None:
        self.tracking = tracking
        self.liveness_log = liveness_log
        self.monitor = monitor
        self._counts = counts
        """The monitor's window summed over processes, with the reviver's pruned weights masked."""
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
        """Log the closed `window` (TrainWindow.take()) at `step`; returns the alerts' actions."""
        window_loss, window_steps, tokens_per_s = window
        metrics = {
            "train/loss": window_loss.item() / max(window_steps, 1),
            "train/lr": lr,
            "train/grad_norm": float(grad_norm),
            "train/tokens_per_s": tokens_per_s,
            "train/epoch": epoch,
        }
        self.tracking.log(metrics, step=step)
        if self.monitor is None:
            return set()
        # arrays, not the per-unit report: that is built only where it is written (epoch end)
        counts = self._counts()
        self.monitor.reset()
        if counts.max_tokens == 0:  # a window with no counted tokens (liveness.sample_every) says nothing
            return set()
        due = reaches_multiple(step, self.log_every, self.frequency_histogram_every)
        return self.liveness_log.log(counts, step, when="train", histograms=due)
