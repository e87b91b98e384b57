"""Preemption: SIGTERM (what SLURM and Kubernetes send before a kill) and SIGINT (Ctrl-C) ask the run to stop
at the next train log (or checkpoint, revival, epoch end: the trainer's next read of the device, at most
`train.log_every` optimizer steps away), where it saves a checkpoint, says so, and exits with status 75
(`errors.EXIT_PREEMPTED`, EX_TEMPFAIL: a job script requeues on it); `train.resume=auto` then continues bit-identically. A second
SIGINT stops at once (KeyboardInterrupt). With several processes the request rides on each step's loss
all-reduce and is read with the rest at that read, so every process stops at the same step even when only one
was signalled, and at the step one process would stop at (`RunControl`).

During set-up (checks, data preparation and hashing, the model built, a checkpoint restored: everything before
the run writes its folder) there is no step to stop at: a signal raises `StoppedInSetup` at once, and the run
ends with nothing of it written (exit 75 for SIGTERM, 130 for SIGINT). From `started()` on, the signal is a
request read at the next train log, as above: stopping at once after config.yaml is written would leave a run
folder with no checkpoint, which neither resume mode accepts."""

from __future__ import annotations

import logging
import signal
import threading

from reviveformer.errors import StoppedInSetup

log = logging.getLogger("reviveformer")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    def __init__(self) -> None:
        self.signal: int | None = None
        """The first stop signal received, if any."""
        self._previous: dict[int, object] = {}
        self.in_setup = True
        """Until the run writes its folder (`started`): a signal raises StoppedInSetup at once."""

    def install(self) -> None:
        """Handle the stop signals (only the main thread may; elsewhere, as in a notebook's worker, they keep
        their default meaning)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def started(self) -> None:
        """The run writes its folder from here on: a signal is a request for a checkpoint at the next train log."""
        self.in_setup = False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if self.in_setup:
            # once: a signal during the exit's clean-up is a request (a second Ctrl-C: at once)
            self.in_setup = False
            self.signal = signum
            raise StoppedInSetup(signal.Signals(signum).name)
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.signal is None:
            self.signal = signum
            log.warning(
                "%s received: stopping at the next train log with a checkpoint (Ctrl-C again stops at once)",
                signal.Signals(signum).name,
            )
