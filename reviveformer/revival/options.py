"""The revival section's shared keys (`RevivalConfig`): they live here, below `reviveformer.config`, which
assembles the sections, so that the revival registry can read its own field names (`SHARED_KEYS`). Each
method's own section `revival.<name>` is its `Options` dataclass (`config.revival_config_class`)."""

from __future__ import annotations

from dataclasses import dataclass

from reviveformer.errors import failed_checks as _problems
from reviveformer.errors import raise_problems as _raise

REVIVAL_EVERY = ("epoch", "task")


@dataclass
class RevivalConfig:
    """The keys every method shares. Each method adds its own section `revival.<name>`, its `Options` dataclass
    (`revival_config_class` builds the full section; docs/design.md, Revival)."""

    method: str = "none"
    """none, synaptic_stripping, redo, grama (gradient-magnitude dormancy, Liu et al. 2025),
    continual_backprop (Dohare et al. 2024), shrink_perturb (Ash & Adams 2020), l2_init (Kumar et al. 2023),
    fresh_start, or your own Reviver as package.module:Class (imported only when named here)."""
    every_steps: int = 0
    """Revive every this many optimizer steps instead of at epoch end (>= 0; 0: at `every`)."""
    every: str = "epoch"
    """When revival runs while every_steps is 0: at each epoch end (epoch) or at each task boundary (task,
    with a task sequence: tasks.kind)."""

    def __post_init__(self) -> None:
        _raise(
            "revival",
            _problems(
                [
                    (bool(self.method), "method must be none, a method name or package.module:Class"),
                    (self.every_steps >= 0, f"every_steps={self.every_steps} must be >= 0"),
                    (
                        self.every in REVIVAL_EVERY,
                        f"every={self.every!r} must be one of {', '.join(REVIVAL_EVERY)}",
                    ),
                ]
            ),
        )
