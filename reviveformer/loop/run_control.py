"""The run's hold on its folder and how a session ends: the folder's lock (one run per folder, on the main
process), `status.json` at the start and at every end, and stop signals (`Preemption`), agreed by every process
at the same step boundary (docs/design.md, "Where it must not break").

The agreement costs no host sync per step: each step's vote rides on the loss all-reduce and stays on the
device; the trainer reads the last vote with its other device values at its next read (the train log, a
checkpoint, a revival, an epoch end), a step every process reaches together, and stops there. One process
waits for the same read, so that a run stops at the same step whatever its process count."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from reviveformer.checkpoint import find_resume_point
from reviveformer.errors import NoSpace, Preempted, StoppedInSetup, TrainingHalted, UserError, disk_full
from reviveformer.loop.position import Position
from reviveformer.loop.preemption import Preemption
from reviveformer.run_lock import RunLock
from reviveformer.run_status import read_status, write_status


class RunControl:
    def __init__(self, run_dir: Path, accelerator) -> None:
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.lock = RunLock(run_dir) if self.is_main else None
        self.preemption = Preemption()
        self.holds_folder = False
        """Whether this process holds the folder's lock (the main process, once `acquire` has passed)."""
        self.started = False
        """Whether the run has begun writing its folder (status.json is written from then on)."""
        self.stop_now = False
        """A stop signal, agreed by every process at the last read."""
        self._vote: torch.Tensor | None = None
        """This process's stop vote, a device scalar refilled each step (no host-to-device copy)."""
        self._agreed: torch.Tensor | None = None
        """The last step's votes averaged over processes, on the device until the next read."""
        self._asked = False
        """One process: whether it had been signalled by the last step's `agree`."""

    def watch_signals(self) -> None:
        """Handle the stop signals from here on (the run's first act): at once during set-up, then at the next
        train log (`Preemption`)."""
        self.preemption.install()

    def acquire(self, check_output_dir) -> None:
        """Take the folder's lock, or refuse on every process when another run holds it; `check_output_dir`
        runs first, before the lock creates the folder."""
        check_output_dir(self.run_dir)
        refusal = self.lock.try_acquire() if self.lock is not None else None
        if self.accelerator.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if refusal:
            raise UserError(refusal)
        self.holds_folder = self.lock is not None

    def start(self) -> None:
        """The run begins writing its folder: a stop signal waits for the next train log (and its checkpoint);
        say who holds the lock."""
        self.preemption.started()
        if self.lock is not None:
            self.lock.announce()
        self.started = True

    def status(
        self, state: str, pos: Position, reason: str | None = None, final_step: int | None = None
    ) -> None:
        """RUN_DIR/status.json (main process, once the run has started its folder)."""
        if self.is_main and self.started:
            write_status(self.run_dir, state, pos.step, pos.epoch, reason, final_step)

    def ended_by(self, error: BaseException, pos: Position) -> BaseException:
        """status.json for a run ended by `error`: halted (non-finite steps), preempted (a stop signal, after its
        checkpoint), interrupted (a second Ctrl-C: out at once, no checkpoint of this moment), stopped during
        set-up, or no_space. Returns what the run ends with: `error` itself, or for a full disk, whatever was
        writing, the one-message `NoSpace` (see `no_space`)."""
        if isinstance(error, TrainingHalted):
            self.status("halted", pos, str(error))
        elif isinstance(error, Preempted):
            self.status("preempted", pos, str(error))
        elif isinstance(error, StoppedInSetup):
            self._stopped_in_setup(error, pos)
        elif isinstance(error, KeyboardInterrupt):
            self.status("interrupted", pos, "a second Ctrl-C (SIGINT) stopped it at once")
        elif isinstance(error, Exception):
            return self.no_space(error, pos) or error
        return error

    def _stopped_in_setup(self, error: StoppedInSetup, pos: Position) -> None:
        """status.json of a run stopped by a signal before it wrote its folder (main process, lock held): at the
        restored position's step, else at the step the folder last recorded (a resume stopped before its
        checkpoint was read), else 0."""
        if not self.holds_folder:
            return  # before the lock: the folder may be another run's
        step, epoch = pos.step, pos.epoch
        if not step:
            try:
                old = read_status(self.run_dir)
            except UserError:
                old = None
            if old is not None and old.step is not None:
                step, epoch = old.step, old.epoch or 0
        write_status(self.run_dir, error.state, step, epoch, str(error))

    def no_space(self, error: BaseException, pos: Position) -> NoSpace | None:
        """The exit of a run whose device (or quota) is full, `error` or an exception it was raised from
        (an ENOSPC or EDQUOT OSError), naming the device's path and the checkpoint a resume continues from;
        status.json says so when it still fits. None for any other error."""
        full = disk_full(error, self.run_dir)
        if full is None:
            return None
        where = Path(full.filename) if isinstance(full.filename, str) else self.run_dir
        if where.resolve().is_relative_to(self.run_dir.resolve()):
            where = self.run_dir
        good = find_resume_point(self.run_dir / "checkpoints")
        if good is not None:
            step = int(good.name.rsplit("_", 1)[1])
            then = f"the checkpoint at step {step} is intact; free space and resume with train.resume=auto"
        else:
            then = "no checkpoint was saved yet; free space and run it again"
            # a run folder without a checkpoint: neither resume mode takes it
            if (self.run_dir / "config.yaml").is_file():
                then += f" (remove {self.run_dir} first)"
        message = f"no space left on the device holding {where}; {then}"
        try:
            self.status("no_space", pos, message)
        except OSError:
            message += " (status.json could not be updated either)"
        return NoSpace(message)

    def agree(self, step_loss: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over processes; this process's stop vote rides on the same all-reduce (no
        extra collective) and is kept on the device for `read_votes`. One process: its own loss, no vote."""
        acc = self.accelerator
        if acc.num_processes == 1:
            self._asked = self.preemption.requested  # as of this step, as the vote would be
            return step_loss
        if self._vote is None:
            self._vote = torch.zeros((), device=acc.device, dtype=step_loss.dtype)
        self._vote.fill_(float(self.preemption.requested))  # a kernel's argument, not a copy: no sync
        both = acc.reduce(torch.stack([step_loss, self._vote]), "mean")
        self._agreed = both[1]
        return both[0]

    def votes(self) -> torch.Tensor | None:
        """The last agreed vote for the caller's single read (None: one process, nothing to read)."""
        return None if self._agreed is None else self._agreed.reshape(1)

    def read_votes(self, agreed: float | None) -> None:
        """At a read, every process at the same step: stop when a process had asked by the last step (`agreed`,
        the value of `votes()`; one process: its own signal as of that step). A read with no step since the
        last one leaves the verdict as it was."""
        if agreed is not None:
            self.stop_now = self.stop_now or agreed > 0
        elif self.accelerator.num_processes == 1:
            self.stop_now = self._asked
        self._agreed = None

    def preempted(self, step: int, checkpoint: Path) -> Preempted:
        """The exit of a run stopped by a signal at `step`, its position saved in `checkpoint` (exit 75)."""
        return Preempted(
            f"{self.preemption.name or 'a stop signal'} at step {step}: checkpoint {checkpoint} saved; continue "
            "with train.resume=auto (the resume is exact)"
        )

    def end(self) -> None:
        """Signals back to their handlers, the lock released (every exit path)."""
        self.preemption.uninstall()
        if self.lock is not None:
            self.lock.release()
