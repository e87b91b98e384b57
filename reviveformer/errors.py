"""Errors that reach the user as one clear paragraph and exit status 2 (never a traceback), and the command
line's exit statuses."""

import errno
import os
import shutil
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_HALTED = 3  # TrainingHalted: non-finite steps past train.max_bad_steps
EXIT_STOPPED = 4  # an alert's `stop` action ended training early (final/ written)
EXIT_NO_SPACE = 74  # EX_IOERR: the disk (or quota) holding the run is full; the last checkpoint is intact
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGINT, a checkpoint saved; requeue with train.resume=auto
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C, or a Ctrl-C during set-up
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of a command's output closed it (`| head`)


class UserError(Exception):
    """Bad input from the user: a config value, a file, a checkpoint. The message says what would be valid."""


class ConfigError(UserError):
    """A recipe or override that does not fit the schema."""


class DataError(UserError):
    """Missing, empty or unusable data."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the config."""


class TrainingHalted(Exception):
    """Training stopped on purpose (non-finite loss, an alert's stop action); the last good checkpoint stays."""


class Preempted(Exception):
    """SIGTERM or SIGINT: a checkpoint was saved at a step boundary; `train.resume=auto` continues exactly."""


class NoSpace(Exception):
    """The device (or quota) holding the run is full: one message naming it and the intact checkpoint (exit 74)."""


class StoppedInSetup(BaseException):
    """SIGTERM or SIGINT during set-up, before the run wrote its folder: the run stops at once, with nothing
    trained or saved (exit 75 for SIGTERM, 130 for SIGINT). A BaseException, as KeyboardInterrupt is, so that
    no `except Exception` in the set-up swallows it."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame

    @property
    def exit_status(self) -> int:
        return EXIT_INTERRUPTED if self.signame == "SIGINT" else EXIT_PREEMPTED

    @property
    def state(self) -> str:
        """status.json's state: `interrupted` (Ctrl-C) or `preempted` (SIGTERM: a job script requeues)."""
        return "interrupted" if self.signame == "SIGINT" else "preempted"

    def __str__(self) -> str:
        return (
            f"{self.signame} during set-up, before the first step: nothing of this session was trained or "
            "saved; run the command again (with train.resume=auto it continues a run's last checkpoint)"
        )


def failed_checks(checks: list[tuple[bool, str]]) -> list[str]:
    """The messages of the checks that failed, from (ok, message) pairs: several problems in one message."""
    return [msg for ok, msg in checks if not ok]


def raise_problems(section: str, problems: list[str]) -> None:
    """A config section's `__post_init__` raises one ValueError naming each failed key as section.key."""
    if problems:
        raise ValueError("; ".join(f"{section}.{p}" for p in problems))


FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's disk quota exceeded
NEARLY_FULL = 2**20  # bytes free under which a failed write is taken for a full disk


def disk_full(error: BaseException, path: Path) -> OSError | None:
    """The ENOSPC or EDQUOT error that `error` is or was raised from, or one made for it when the device
    holding `path` is (nearly) full; None for any other error. Read it before any clean-up frees space.
    safetensors keeps the OS's words in its message, torch's writer none ("unexpected pos ...")."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in FULL:
            return cause
        for code in FULL:
            if os.strerror(code) in str(cause):
                return OSError(code, str(cause))
        cause = cause.__cause__ or cause.__context__
    return OSError(errno.ENOSPC, str(error)) if _free_bytes(Path(path)) < NEARLY_FULL else None


def _free_bytes(path: Path) -> float:
    """Free bytes on the device holding `path` (or its nearest existing parent); infinite when unknown."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return float("inf")
