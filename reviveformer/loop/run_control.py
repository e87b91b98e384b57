"""The run's hold on its folder and how a session ends: the folder's lock (one run per folder, on the main
process), `status.json` at the start and at every end, and stop signals (`Preemption`), agreed by every process
at a step boundary (docs/design.md, "Where it must not break")."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from reviveformer.errors import UserError
from reviveformer.loop.position import Position
from reviveformer.loop.preemption import Preemption
from reviveformer.run_lock import RunLock
from reviveformer.run_status import write_status


class RunControl:
    def __init__(self, run_dir: Path, accelerator) -> None:
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.lock = RunLock(run_dir) if self.is_main else None
        self.preemption = Preemption()
        self.started = False
        """Whether the run has begun writing its folder (status.json is written from then on)."""
        self.stop_now = False
        """A stop signal, agreed by every process at the last step boundary."""

    def acquire(self, check_output_dir) -> None:
        """Take the folder's lock, or refuse on every process when another run holds it; `check_output_dir`
        runs first, before the lock creates the folder. Stop signals are handled from here on."""
        check_output_dir(self.run_dir)
        refusal = self.lock.try_acquire() if self.lock is not None else None
        if self.accelerator.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if refusal:
            raise UserError(refusal)
        self.preemption.install()

    def start(self) -> None:
        """The run begins writing its folder: say who holds the lock."""
        if self.lock is not None:
            self.lock.announce()
        self.started = True

    def status(
        self, state: str, pos: Position, reason: str | None = None, final_step: int | None = None
    ) -> None:
        """RUN_DIR/status.json (main process, once the run has started its folder)."""
        if self.is_main and self.started:
            write_status(self.run_dir, state, pos.step, pos.epoch, reason, final_step)

    def agree(self, step_loss: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over processes; a stop signal any process received rides on the same
        all-reduce (no extra collective), so that all stop at this step (`stop_now`). One process: its own."""
        acc = self.accelerator
        if acc.num_processes == 1:
            self.stop_now = self.preemption.requested
            return step_loss
        stop = torch.tensor(float(self.preemption.requested), device=acc.device, dtype=step_loss.dtype)
        both = acc.reduce(torch.stack([step_loss, stop]), "mean")
        self.stop_now = bool(both[1] > 0)
        return both[0]

    def end(self) -> None:
        """Signals back to their handlers, the lock released (every exit path)."""
        self.preemption.uninstall()
        if self.lock is not None:
            self.lock.release()
