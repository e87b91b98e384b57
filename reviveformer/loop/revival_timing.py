"""When revival runs: every `revival.every_steps` optimizer steps when set, else at each epoch end or, with
`revival.every=task`, at each task boundary; never without a revival method."""

from __future__ import annotations


class RevivalTiming:
    def __init__(self, enabled: bool, every_steps: int, every: str = "epoch") -> None:
        self.enabled = enabled
        self.every_steps = every_steps
        self.every = every

    def due_after_step(self, step: int) -> bool:
        return self.enabled and bool(self.every_steps) and step % self.every_steps == 0

    @property
    def at_epoch_end(self) -> bool:
        return self.enabled and not self.every_steps and self.every == "epoch"

    @property
    def at_task_end(self) -> bool:
        return self.enabled and not self.every_steps and self.every == "task"
