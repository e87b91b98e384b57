"""The one door in and out of a checkpoint's training state (torchtitan's `CheckpointManager.states`): each
stateful part (the position, the monitor, the reviver, the alerts) is registered once with `TrainingState`,
which writes their `state_dict`s into every checkpoint (`state_dict`) and, when a run resumes, restores
Accelerate's own state (weights, optimizer, schedule, RNG) and then each part's (`load`). Nothing else
restores state.

What a checkpoint holds besides Accelerate's state is unchanged from before this object: the position's keys
at the top level (step, epoch, batches_in_epoch, batches_per_epoch, num_processes, step_budget, bad_steps,
tokens_seen, task, task_train_loss; the non-finite steps' count and the task index are the position's), the
resolved config, the monitor's, the reviver's and the alerts' state (None for a part the run has not), and an
alert's stop when one ended the run there (docs/design.md, "Resuming")."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Protocol

from reviveformer import checkpoint as ckpt
from reviveformer.config import Config, TrainConfig, to_dict
from reviveformer.evaluation import reduce_sum
from reviveformer.liveness import LivenessMonitor
from reviveformer.loop.position import Position
from reviveformer.resume import restore_position

log = logging.getLogger("reviveformer")

PARTS = ("monitor", "reviver", "alerts")
"""The parts saved under their own key, in the order a checkpoint has always held them."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Settles(Protocol):
    def settle(self) -> None: ...


class PositionState:
    """The position's part of a checkpoint: its keys at the top level of the state. A resume deals the data
    position again over this run's processes (`resume.restore_position`) and restores it in place: the parts
    that read the position (the task's validation data) hold the same object."""

    def __init__(self, pos: Position, tc: TrainConfig, num_processes: int) -> None:
        self.pos = pos
        self.tc = tc
        self.num_processes = num_processes

    def state_dict(self) -> dict[str, Any]:
        pos = self.pos
        return {
            "step": pos.step,
            "epoch": pos.epoch,
            "batches_in_epoch": pos.batches_in_epoch,
            "batches_per_epoch": pos.batches_per_epoch,
            "num_processes": self.num_processes,
            "step_budget": pos.step_budget,
            "bad_steps": pos.bad_steps,
            "tokens_seen": pos.tokens_seen,
            "task": pos.task,
            "task_train_loss": pos.task_train_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = restore_position(state, self.tc, self.pos.batches_per_epoch, self.num_processes)
        for field in dataclasses.fields(Position):
            setattr(self.pos, field.name, getattr(restored, field.name))


class MonitorState:
    """The monitor's part: its training window summed over processes (the main process alone writes it), and
    at a resume counted once (on the main process; the others start from zero)."""

    def __init__(self, monitor: LivenessMonitor, accelerator) -> None:
        self.monitor = monitor
        self.accelerator = accelerator

    def state_dict(self) -> dict[str, Any]:
        state = self.monitor.state_dict()
        acc = self.accelerator
        if acc.num_processes > 1:
            for counts in state["sites"].values():
                for k, t in counts.items():
                    counts[k] = reduce_sum(acc, t.to(acc.device)).cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)
        if (
            not self.accelerator.is_main_process
        ):  # the saved counts are the sum over processes: count them once
            self.monitor.reset()


class TrainingState:
    def __init__(
        self, accelerator, cfg: Config, position: PositionState, resumed_from: Path | None, saved: dict | None
    ) -> None:
        self.accelerator = accelerator
        self.cfg = cfg
        self.position = position
        self.parts: dict[str, Stateful] = {}
        self.resumed_from = resumed_from
        """The checkpoint this run resumes from (None: a fresh start)."""
        self.saved = saved
        """That checkpoint's state (read and checked by `resume.check_resume`), restored by `load`."""
        self.pending: list[Settles] = []
        """What holds device work not yet accounted for (the step guard, the liveness log): settled, in
        order, before the state is read, so that a checkpoint holds every step and window counted."""
        self.stopped_by: str | None = None
        """An alert's stop, recorded in the checkpoints saved after it."""

    @property
    def resumed_step(self) -> int | None:
        """The step a resumed run starts at (its checkpoint holds that position already); None: fresh."""
        return self.position.pos.step if self.resumed_from is not None else None

    def register(self, name: str, part: Stateful | None) -> None:
        """`part` (one of PARTS) saved and restored under `name`; None: the run has no such part."""
        assert name in PARTS, name
        if part is not None:
            self.parts[name] = part

    def state_dict(self) -> dict[str, Any]:
        for part in self.pending:
            part.settle()
        state = {**self.position.state_dict(), "config": to_dict(self.cfg)}
        for name in PARTS:
            part = self.parts.get(name)
            state[name] = part.state_dict() if part is not None else None
        state["stopped_by"] = self.stopped_by
        return state

    def load(self) -> None:
        """Resume: Accelerate's state from the checkpoint, then the position and each registered part's."""
        if self.resumed_from is None or self.saved is None:
            return
        ckpt.load_checkpoint(self.accelerator, self.resumed_from)
        self.position.load_state_dict(self.saved)
        for name, part in self.parts.items():
            if self.saved.get(name) is not None:
                part.load_state_dict(self.saved[name])
        pos = self.position.pos
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d, task %d)",
            self.resumed_from, pos.step, pos.epoch, pos.batches_in_epoch, pos.task,
        )  # fmt: skip
