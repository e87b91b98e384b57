"""Neuron revival: synaptic stripping (Whitaker & Whitley 2023), ReDo (Sokar et al. 2023) and GraMa (Liu et al.
2025).

`build_reviver(cfg.revival, seed=cfg.train.seed)` gives the configured `Reviver` (None for method none). A new
method is a new module with a `Reviver` subclass (its `name` and `arm`) and one line in `REVIVERS` (and its
name in the config's `REVIVAL_METHODS`); the trainer's job_type and compare's arm label come from here.
"""

from __future__ import annotations

from typing import Any

from reviveformer.revival.base import Reviver, check_supported
from reviveformer.revival.grama import GraMa
from reviveformer.revival.optim import reset_adam_state
from reviveformer.revival.redo import ReDo
from reviveformer.revival.stripping import SynapticStripping, strip_layer

REVIVERS: dict[str, type[Reviver]] = {cls.name: cls for cls in (SynapticStripping, ReDo, GraMa)}
# The arm of a run without revival.
BASELINE_ARM = "baseline"


def arm_of_method(method: str) -> str:
    """The arm (W&B job_type, comparison label) of runs with this `revival.method`; an unknown name is its own."""
    if method == "none":
        return BASELINE_ARM
    return REVIVERS[method].arm if method in REVIVERS else method


def build_reviver(cfg: Any, *, seed: int = 0) -> Reviver | None:
    """The reviver for a `RevivalConfig` (None when `method` is none); `seed` seeds methods that draw weights."""
    if cfg.method == "none":
        return None
    if cfg.method not in REVIVERS:
        raise ValueError(f"revival.method={cfg.method!r} must be one of none, {', '.join(REVIVERS)}")
    return REVIVERS[cfg.method].from_config(cfg, seed=seed)


__all__ = [
    "BASELINE_ARM",
    "REVIVERS",
    "GraMa",
    "ReDo",
    "Reviver",
    "SynapticStripping",
    "arm_of_method",
    "build_reviver",
    "check_supported",
    "reset_adam_state",
    "strip_layer",
]
