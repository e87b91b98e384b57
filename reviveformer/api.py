"""The helpers the public API (`reviveformer/__init__.py`, docs/api.md) adds on top of the packages it re-exports."""

from __future__ import annotations

import dataclasses
from typing import Any

from reviveformer.config.checks import value_problems
from reviveformer.revival import REVIVERS, Reviver, reviver_class


def make_reviver(method: str, *, seed: int = 0, **options: Any) -> Reviver:
    """The revival method `method` ready to use: `synaptic_stripping`, `redo`, `grama`, `continual_backprop`,
    `shrink_perturb`, `l2_init`, `fresh_start` (the built-ins, keys of `reviveformer.revival.REVIVERS`) or a
    user's own `package.module:Class`, built with its options as keyword
    arguments (e.g. `make_reviver("redo", tau=0.05)`; the method's defaults otherwise) and `seed` for the
    weights it draws.

    Use it as `reviver.revive(model, liveness_report, optimizer)`: it edits the model's MLP weights from the
    report (at site `mlp_post`), resets the optimizer state of exactly the entries it edited (give the torch
    optimizer, or None when there is none), and returns its `revival/...` metrics. Keep the object for the whole
    run: it remembers the previous revival (units revived since), its pruning masks (persistent stripping: call
    `after_optimizer_step(model)` after each optimizer step) and its gradient window (GraMa: call
    `before_optimizer_step(model)` before each). The methods that act every step (`acts == "step"`: Continual
    Backprop, L2 toward init) need both step hooks, and Continual Backprop `attach(model, optimizer)` before the
    first forward (its activation hooks; `close()` removes them). An unknown method or option is a ValueError
    naming the valid ones, and so is an option outside its range (the same words as the command line's)."""
    try:
        cls = reviver_class(method)
    except Exception as e:  # ConfigError names the valid methods; a library caller expects a ValueError
        raise ValueError(str(e)) from None
    if cls is None:
        raise ValueError(f"method={method!r} revives nothing; choose one of {', '.join(REVIVERS)}")
    if cls.Options is None:
        if options:
            raise ValueError(f"revival method {cls.name} takes no options, got {sorted(options)}")
        return cls.from_config(None, seed=seed)
    valid = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"revival method {cls.name} has no option {unknown}; its options are {valid}")
    opts = cls.Options(**options)
    # the checks the CLI runs on the same options: a nan passes `tau >= 0` (ReDo would never revive), and a
    # value beyond its field's range (l2_init.strength=1e30: nothing is learned) passes the method's own checks
    if problems := value_problems(opts, f"revival.{cls.name}"):
        raise ValueError("; ".join(problems))
    return cls.from_config(opts, seed=seed)
