"""reviveformer: train small GPT-2 variants with neuron liveness tracking and neuron revival.

The design contract (definitions, interfaces, file layouts, metric names) is docs/design.md. The public API is
`__all__` below, documented in docs/api.md: these names change only with a version bump; everything else in the
package is private and may change in any release. They are imported on first use, so `import reviveformer` stays
cheap (no torch) for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "LivenessMonitor": "reviveformer.liveness",
    "LivenessConfig": "reviveformer.liveness",
    "LivenessReport": "reviveformer.liveness",
    "LayerLiveness": "reviveformer.liveness",
    "LivenessCounts": "reviveformer.liveness",
    "Reviver": "reviveformer.revival",
    "make_reviver": "reviveformer.api",
    "AlertManager": "reviveformer.alerts",
    "AlertRule": "reviveformer.config",
    "AlertsConfig": "reviveformer.config",
    "console_sink": "reviveformer.alerts",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'reviveformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
