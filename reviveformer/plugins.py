"""Loading a user's own code that a config names as `package.module:attr` (a custom activation, a revival
method): the import and the attribute lookup, with errors that name the config key. Each caller checks what
the object must be (a callable, a `Reviver` subclass).

Trust: a name on the user's command line or in their recipe is theirs and is imported. A name that a saved
model's own files carry (config.json's activation, reviveformer.yaml's revival.method) is imported only when
the user opts in for that load, as transformers' `trust_remote_code`: `check_trusted` refuses it otherwise,
before anything is imported (importing a module runs it, and `python -m` puts the current folder, often the
model's parent, on the import path)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from reviveformer.errors import CheckpointError, ConfigError

# How each entry point opts in, for the refusal to name.
TRUST_FLAG = "--trust-remote-code"
TRUST_KEY = "model.trust_remote_code"


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """The opt-in flag of the commands that open a saved model (audit, strip)."""
    parser.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="import and run the code the model's own files name (a package.module:attr activation in "
        "config.json, revival.method in reviveformer.yaml); refused without it. Built-in names need no "
        f"opt-in. The override {TRUST_KEY}=true does the same",
    )


def names_code(name: str) -> bool:
    """Whether a config value names code to import (`package.module:attr`) rather than a built-in name."""
    return ":" in name


def check_trusted(name: str, *, source: str, key: str, trusted: bool, opt_in: str) -> None:
    """Refuse `name` (the value of `key` read from the file `source`) when it names code and the user has not
    opted in; `opt_in` says how they do (the flag or key of the command that loads it)."""
    if trusted or not names_code(name):
        return
    raise CheckpointError(
        f"{source} names {key}={name!r}, which would import and run module {name.partition(':')[0]!r}; "
        "code named by a model's own files is never run unless you opt in for that load. If you trust "
        f"this model and its code, {opt_in}; built-in names need no opt-in"
    )


def import_spec(spec: str, key: str, malformed: str) -> Any:
    """The object at `package.module:attr` (`attr` may be dotted). `malformed` is the error for a `spec` without
    that shape; a module that fails to import, or lacks the attribute, is a ConfigError naming `key`."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(malformed)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise ConfigError(
            f"{key}={spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); "
            "is it installed or on PYTHONPATH?"
        ) from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}={spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj
