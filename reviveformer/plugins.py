"""Loading a user's own code that a config names as `package.module:attr` (a custom activation, a revival
method): the import and the attribute lookup, with errors that name the config key. Each caller checks what
the object must be (a callable, a `Reviver` subclass)."""

from __future__ import annotations

import importlib
from typing import Any

from reviveformer.errors import ConfigError


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
