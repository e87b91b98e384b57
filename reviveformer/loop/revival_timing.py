"""When revival runs: every `revival.every_steps` optimizer steps when set, else at each epoch end; never
without a revival method."""

from __future__ import annotations


class RevivalTiming:
    def __init__(self, enabled: bool, every_steps: int) -> None:
        self.enabled = enabled
        self.every_steps = every_steps

    def due_after_step(self, step: int) -> bool:
        return self.enabled and bool(self.every_steps) and step % self.every_steps == 0

    @property
    def at_epoch_end(self) -> bool:
        return self.enabled and not self.every_steps

    @property
    def on_steps(self) -> bool:
        """Revival runs on its step cadence only (an alert's `revive` action at epoch end is then its own)."""
        return bool(self.every_steps)
