"""Neuron revival: synaptic stripping (Whitaker & Whitley 2023), ReDo (Sokar et al. 2023) and GraMa (Liu et al.
2025); the continual-learning methods Continual Backprop (Dohare et al. 2024), shrink and perturb (Ash & Adams
2020), L2 toward the initial weights (Kumar et al. 2023) and a fresh start (the ceiling); and a user's own
`Reviver` named `package.module:Class`.

`build_reviver(cfg.revival, seed=cfg.train.seed)` gives the configured `Reviver` (None for method none). A new
built-in method is one module with a `Reviver` subclass (its `name`, `arm`, `Options` and metric names) and one
entry in `REVIVERS`; the config section, the trainer's job_type and compare's arm label all come from the class.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from reviveformer.errors import ConfigError
from reviveformer.plugins import import_spec
from reviveformer.revival.base import Reviver, check_supported
from reviveformer.revival.continual_backprop import ContinualBackprop
from reviveformer.revival.fresh_start import FreshStart
from reviveformer.revival.grama import GraMa
from reviveformer.revival.l2_init import L2Init
from reviveformer.revival.optim import reset_adam_state
from reviveformer.revival.options import RevivalConfig
from reviveformer.revival.redo import ReDo
from reviveformer.revival.shrink_perturb import ShrinkPerturb
from reviveformer.revival.stripping import SynapticStripping, strip_layer

REVIVERS: dict[str, type[Reviver]] = {
    cls.name: cls
    for cls in (SynapticStripping, ReDo, GraMa, ContinualBackprop, ShrinkPerturb, L2Init, FreshStart)
}
# The arm of a run without revival.
BASELINE_ARM = "baseline"
# Keys of the revival section shared by every method: a method's section may not take these names. Read from
# the dataclass, so a new shared key is never shadowed by a method of that name.
SHARED_KEYS = tuple(f.name for f in fields(RevivalConfig))


def valid_methods() -> str:
    return f"one of none, {', '.join(REVIVERS)}, or your own Reviver as package.module:Class"


def _import_reviver(spec: str, key: str) -> type[Reviver]:
    """The `Reviver` subclass named by `package.module:Class` (imported here, only because a config named it)."""
    obj = import_spec(spec, key, f"{key}={spec!r} must be {valid_methods()}")
    attr_path = spec.partition(":")[2]
    if not (isinstance(obj, type) and issubclass(obj, Reviver)):
        raise ConfigError(
            f"{key}={spec!r}: {attr_path!r} is not a subclass of reviveformer.revival.Reviver "
            "(see docs/design.md, Revival)"
        )
    missing = [
        a for a in ("name", "arm") if not isinstance(getattr(obj, a, None), str) or not getattr(obj, a)
    ]
    if missing or getattr(obj, "__abstractmethods__", None):
        what = [f"{a} (a non-empty str)" for a in missing] + sorted(getattr(obj, "__abstractmethods__", ()))
        raise ConfigError(f"{key}={spec!r}: {attr_path!r} does not define {', '.join(what)}")
    if REVIVERS.get(obj.name) is obj:  # a built-in named by its module path
        return obj
    if obj.name in REVIVERS or obj.name in SHARED_KEYS or obj.name == "none" or not obj.name.isidentifier():
        raise ConfigError(
            f"{key}={spec!r}: its name {obj.name!r} names its config section revival.{obj.name}, so "
            f"it must be an identifier other than none, {', '.join(SHARED_KEYS)} and the built-in "
            f"methods ({', '.join(REVIVERS)})"
        )
    return obj


def reviver_class(method: str, key: str = "revival.method") -> type[Reviver] | None:
    """The class of a `revival.method` value: None for none, a registered method, or an imported
    `package.module:Class`; anything else is a ConfigError naming the valid values."""
    if method == "none":
        return None
    if method in REVIVERS:
        return REVIVERS[method]
    if ":" in method:
        return _import_reviver(method, key)
    raise ConfigError(f"{key}={method!r} must be {valid_methods()}")


def arm_of_method(method: str) -> str:
    """The arm (W&B job_type, comparison label) of runs with this `revival.method`; a name that cannot be
    resolved (a plug-in no longer importable) is its own arm."""
    try:
        cls = reviver_class(method)
    except ConfigError:
        return method
    return BASELINE_ARM if cls is None else cls.arm


def build_reviver(cfg: Any, *, seed: int = 0) -> Reviver | None:
    """The reviver for a revival config (None when `method` is none), built from its own section
    `revival.<name>` (the section's defaults when a config built in code lacks it); `seed` seeds methods that
    draw weights."""
    cls = reviver_class(cfg.method)
    if cls is None:
        return None
    options = getattr(cfg, cls.name, None)
    if options is None and cls.Options is not None:
        options = cls.Options()
    return cls.from_config(options, seed=seed)


__all__ = [
    "BASELINE_ARM",
    "REVIVERS",
    "ContinualBackprop",
    "FreshStart",
    "GraMa",
    "L2Init",
    "ReDo",
    "Reviver",
    "ShrinkPerturb",
    "SynapticStripping",
    "arm_of_method",
    "build_reviver",
    "check_supported",
    "reset_adam_state",
    "reviver_class",
    "strip_layer",
]
