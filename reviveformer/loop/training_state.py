"""The one door in and out of a checkpoint's training state (torchtitan's `CheckpointManager.states`): each
stateful part (the position, the monitor, the reviver, the alerts) is registered once with `TrainingState`,
which writes their `state_dict`s into every checkpoint (`state_dict`) and, when a run resumes, restores
Accelerate's own state (weights, optimizer, schedule, RNG) and then each part's (`load`). Nothing else
restores state.

What a checkpoint holds besides Accelerate's state is unchanged from before this object: the position's keys
at the top level (step, epoch, batches_in_epoch, batches_per_epoch, num_processes, step_budget, bad_steps,
tokens_seen, task, task_train_loss; the non-finite steps' count and the task index are the position's), the
resolved config, the monitor's, the reviver's and the alerts' state (None for a part the run has not), an
alert's stop when one ended the run there, and the data's fingerprint (`data_fingerprint`, one entry per source:
the data section, then each of tasks.corpora); the `Checkpointer` saves the run's tokenizer beside it
(docs/design.md, "Resuming")."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Protocol

from reviveformer import checkpoint as ckpt
from reviveformer.config import Config, TrainConfig, to_dict
from reviveformer.evaluation import reduce_sum
from reviveformer.liveness import LivenessMonitor
from reviveformer.loop.position import Position
from reviveformer.resume import what_was_compared

log = logging.getLogger("reviveformer")

PARTS = ("monitor", "reviver", "alerts")
"""The parts saved under their own key, in the order a checkpoint has always held them."""


def restore_position(state: dict, tc: TrainConfig, batches_per_epoch: int, num_processes: int) -> Position:
    """The position a checkpoint's state resumes at on this run's processes: the data position dealt again
    over them on a step boundary, the step budget rescaled so that the same tokens are trained in all."""
    pos = Position(
        step=state["step"],
        epoch=state["epoch"],
        bad_steps=state["bad_steps"],
        tokens_seen=state["tokens_seen"],
        step_budget=tc.max_steps,
        batches_per_epoch=batches_per_epoch,
        task=state.get("task", 0),  # a checkpoint from before task sequences: task 0, the only one
        task_train_loss=state.get("task_train_loss", math.nan),
    )
    saved_np = state.get("num_processes", 1)
    saved_per_epoch = state.get("batches_per_epoch", batches_per_epoch)
    if state["batches_in_epoch"] >= saved_per_epoch:  # the epoch's data is done, its end is not
        pos.batches_in_epoch = batches_per_epoch
    else:  # the data position in global batches, dealt again over this run's processes, on a step boundary
        global_batches = state["batches_in_epoch"] * saved_np
        ga = tc.grad_accum
        pos.batches_in_epoch = global_batches // num_processes // ga * ga
        if pos.batches_in_epoch * num_processes != global_batches:
            log.warning(
                "the %d batches of this epoch already trained do not deal evenly over %d processes: "
                "resuming after %d of them (%d seen again)",
                global_batches,
                num_processes,
                pos.batches_in_epoch * num_processes,
                global_batches - pos.batches_in_epoch * num_processes,
            )
        # data changed under train.resume_data=changed may have fewer batches: its epoch ends at once
        pos.batches_in_epoch = min(pos.batches_in_epoch, batches_per_epoch)
    saved_max = state.get("config", {}).get("train", {}).get("max_steps", tc.max_steps)
    budget = state.get("step_budget", saved_max)
    if budget is not None and saved_max == tc.max_steps and saved_np != num_processes:
        # the same tokens in all: the steps left shrink or grow with the samples each step takes
        pos.step_budget = pos.step + math.ceil((budget - pos.step) * saved_np / num_processes)
    elif budget is not None and saved_max == tc.max_steps:
        pos.step_budget = budget
    return pos


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Settles(Protocol):
    def settle(self) -> None: ...


class PositionState:
    """The position's part of a checkpoint: its keys at the top level of the state. A resume deals the data
    position again over this run's processes (`restore_position`) and restores it in place: the parts
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
        # the saved counts are the sum over processes: counted once, on the main process
        if not self.accelerator.is_main_process:
            self.monitor.reset()


class TrainingState:
    """What a checkpoint holds besides Accelerate's own state, and the one object that saves (`state_dict`) and
    restores (`load`) it: the position, then each registered part, under its own key."""

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
        self.data_fingerprint: list[dict] | None = None
        """Each data source's fingerprint (`data.PackedData.contents`), recorded in every checkpoint."""

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
        state["data_fingerprint"] = self.data_fingerprint
        return state

    def load(self) -> None:
        """Resume: Accelerate's state from the checkpoint, then the position and each registered part's."""
        if self.resumed_from is None or self.saved is None:
            return
        ckpt.load_checkpoint(self.accelerator, self.resumed_from, what_was_compared(self.saved))
        self.position.load_state_dict(self.saved)
        for name, part in self.parts.items():
            if self.saved.get(name) is not None:
                part.load_state_dict(self.saved[name])
        pos = self.position.pos
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d, task %d)",
            self.resumed_from, pos.step, pos.epoch, pos.batches_in_epoch, pos.task,
        )  # fmt: skip
