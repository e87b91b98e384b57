"""Errors that reach the user as one clear paragraph and exit status 2 (never a traceback), and the command
line's exit statuses."""

EXIT_USER_ERROR = 2
EXIT_HALTED = 3  # TrainingHalted: non-finite steps past train.max_bad_steps
EXIT_STOPPED = 4  # an alert's `stop` action ended training early (final/ written)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM/SIGINT, a checkpoint saved; requeue with train.resume=auto


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


def failed_checks(checks: list[tuple[bool, str]]) -> list[str]:
    """The messages of the checks that failed, from (ok, message) pairs: several problems in one message."""
    return [msg for ok, msg in checks if not ok]


def raise_problems(section: str, problems: list[str]) -> None:
    """A config section's `__post_init__` raises one ValueError naming each failed key as section.key."""
    if problems:
        raise ValueError("; ".join(f"{section}.{p}" for p in problems))
