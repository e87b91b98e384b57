"""Errors that reach the user as one clear paragraph and exit status 2 (never a traceback)."""


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


def failed_checks(checks: list[tuple[bool, str]]) -> list[str]:
    """The messages of the checks that failed, from (ok, message) pairs: several problems in one message."""
    return [msg for ok, msg in checks if not ok]


def raise_problems(section: str, problems: list[str]) -> None:
    """A config section's `__post_init__` raises one ValueError naming each failed key as section.key."""
    if problems:
        raise ValueError("; ".join(f"{section}.{p}" for p in problems))
