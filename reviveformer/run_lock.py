"""One process group per run folder: the main process holds an exclusive lock on RUN_DIR/.lock for the whole
run, so that a second `train` on the same folder (two `train.resume=auto` jobs, say) is refused instead of
training beside it and mixing its metrics in. The lock is the kernel's (flock): a run killed by SIGKILL
releases it with its process, so a stale file never blocks a resume."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created_dir = False
        self._announced = False

    def try_acquire(self) -> str | None:
        """Take the lock; None when taken, else the refusal naming the holder. Opening an existing lock file
        changes nothing in it: a refused run leaves the folder as it was."""
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "still setting up"
            os.close(fd)
            return (
                f"train.output_dir={self.run_dir} is in use by another run ({holder}); wait for it to end, or "
                "give another train.output_dir (nothing was changed)"
            )
        self._fd = fd
        return None

    def announce(self) -> None:
        """Write who holds the lock, once the run starts writing its folder."""
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)
        self._announced = True

    def release(self) -> None:
        """Drop the lock. The file stays (removing it while another process may have it open would let two
        runs lock two different files), except in a folder this lock created and nothing else wrote into,
        which goes whole: a run refused at set-up leaves nothing behind."""
        if self._fd is None:
            return
        if self._created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            self.run_dir.rmdir()
        elif self._announced:
            os.ftruncate(self._fd, 0)  # the next holder is not mistaken for this one while it sets up
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
