"""Validation loss during training (`train.eval_every`) and the last one measured, so that the run's summary
measures again only when the final weights have not been measured yet."""

from __future__ import annotations

from reviveformer.evaluation import Measurement
from reviveformer.tracking import Tracking


class Validator:
    def __init__(self, every: int, measurement: Measurement, tracking: Tracking) -> None:
        self.every = every
        self.measurement = measurement
        self.tracking = tracking
        self.last: dict[str, float] = {}
        """`val/loss` and `val/ppl` of the last validation (a periodic one or an epoch end's)."""
        self.last_step = -1
        self.logged_step = -1
        """The step of the last `val/loss` row logged (a task end measures without one)."""

    def should_validate(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def validate(self, step: int) -> dict[str, float]:
        """A validation loss now, logged at `step`."""
        self.record(self.measurement.evaluate(), step)
        self.tracking.log(self.last, step=step)
        return self.last

    def record(self, val: dict[str, float], step: int, logged: bool = True) -> None:
        """A validation measured elsewhere at `step`: the epoch end's, with liveness, logged as `val/loss`
        there; or a task end's (`logged=False`: logged as `task/val_loss` only)."""
        self.last, self.last_step = val, step
        if logged:
            self.logged_step = step

    def log_final(self, step: int) -> None:
        """Every run ends with a `val/loss` row of its final weights (what reports read as its final loss):
        the last measurement's, logged now if it was of these weights but not logged as one (a task end)."""
        if self.is_current(step) and self.logged_step != step:
            self.tracking.log(self.last, step=step)
            self.logged_step = step

    def is_current(self, step: int) -> bool:
        """Whether the last validation measured the weights of `step`."""
        return self.last_step == step
