"""The training window: loss, steps and tokens since the last train log, and the log cadence
(`train.log_every`). The liveness monitor's counts are the window's other half; the trainer resets them at the
same log."""

from __future__ import annotations

import time

import torch


class TrainWindow:
    def __init__(self, log_every: int, device: torch.device | str) -> None:
        self.log_every = log_every
        self.device = device
        self.loss = torch.zeros((), device=device)
        """Sum of the window's per-step mean losses, on the device (read once per log: no host sync per step)."""
        self.steps = 0
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, step_loss: torch.Tensor, tokens: int) -> None:
        """One optimizer step: its mean loss (a device scalar; 0 for a skipped step, whose verdict is still on
        the device) and the tokens it trained on, all processes."""
        self.loss += step_loss.detach()
        self.steps += 1
        self.tokens += tokens

    def drop_skipped(self, count: int, tokens_per_step: int) -> None:
        """Take out `count` steps added before their non-finite verdict was read (at the latest at this
        window's log): the window's mean loss and throughput are those of the steps that trained, as before."""
        self.steps -= count
        self.tokens -= count * tokens_per_step

    def due(self, step: int) -> bool:
        """Whether the train log (and the end of this window) falls at optimizer step `step`."""
        return step % self.log_every == 0

    def take(self) -> tuple[torch.Tensor, int, float]:
        """Close the window: (loss sum, steps, tokens per second). The next window starts now, so the cost of
        the log that follows (liveness report, alerts) counts in it."""
        now = time.perf_counter()
        taken = (self.loss, self.steps, self.tokens / (now - self.started))
        self.loss = torch.zeros((), device=self.device)
        self.steps, self.tokens, self.started = 0, 0, now
        return taken


def reaches_multiple(step: int, span: int, every: int) -> bool:
    """Whether the `span` steps ending at `step` reach a multiple of `every` (0: never): the train log at which
    a lower cadence (`liveness.frequency_histogram_every`) falls due, whatever `train.log_every` is."""
    return every > 0 and step // every > (step - span) // every
