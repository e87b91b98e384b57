"""Neuron revival: synaptic stripping (Whitaker & Whitley 2023) and ReDo (Sokar et al. 2023).

`build_reviver(cfg.revival, seed=cfg.train.seed)` gives the configured `Reviver` (None for method none). A new
method is a new module with a `Reviver` subclass and one line in `REVIVERS` (and its name in the config's
`REVIVAL_METHODS`).
"""

from __future__ import annotations

from typing import Any

from reviveformer.revival.base import Reviver, check_supported
from reviveformer.revival.optim import reset_adam_state
from reviveformer.revival.redo import ReDo
from reviveformer.revival.stripping import SynapticStripping, strip_layer

REVIVERS: dict[str, type[Reviver]] = {
    SynapticStripping.name: SynapticStripping,
    ReDo.name: ReDo,
}


def build_reviver(cfg: Any, *, seed: int = 0) -> Reviver | None:
    """The reviver for a `RevivalConfig` (None when `method` is none); `seed` seeds methods that draw weights."""
    if cfg.method == "none":
        return None
    if cfg.method not in REVIVERS:
        raise ValueError(f"revival.method={cfg.method!r} must be one of none, {', '.join(REVIVERS)}")
    return REVIVERS[cfg.method].from_config(cfg, seed=seed)


__all__ = [
    "REVIVERS",
    "ReDo",
    "Reviver",
    "SynapticStripping",
    "build_reviver",
    "check_supported",
    "reset_adam_state",
    "strip_layer",
]
