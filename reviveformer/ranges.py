"""A setting's sane range, declared on its dataclass field: `x: float = field(default=1.0, metadata=within(0, 10,
why="..."))`. `reviveformer.config.checks.value_problems` checks it wherever settings enter: the config
loader (the command line), `make_reviver` and the transformers callback (the API), so that all refuse the same
values with the same words. A plug-in method's own options may declare theirs the same way.

A range bounds what a user could sensibly want, wide enough for every setting in the literature; its ends come
from where a value overflows or stops the model from learning (`why` says which). It lives below the config and
the revival and liveness options, which all declare ranges, and imports nothing of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# Field metadata key of a `Range`.
RANGE = "range"


@dataclass(frozen=True)
class Range:
    """low..high, each end included unless `*_open`; `why`: what goes wrong beyond it, for the message."""

    low: float
    high: float
    why: str
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = ("(" if self.low_open else "["), (")" if self.high_open else "]")
        return f"{low}{_show(self.low)}, {_show(self.high)}{high}"


def _show(end: float) -> str:
    """An end as a message shows it: an int whole (a seed's 4294967295), a float short (1e-09, 1000)."""
    return str(end) if isinstance(end, int) else f"{end:g}"


def within(
    low: float, high: float, *, why: str, low_open: bool = False, high_open: bool = False
) -> dict[str, Range]:
    """Field metadata declaring the range low..high (ends included unless open)."""
    assert math.isfinite(low) and math.isfinite(high) and low < high, (low, high)
    return {RANGE: Range(low, high, why, low_open, high_open)}


def field_range(cls: type, name: str) -> Range:
    """The range declared on dataclass `cls`'s field `name` (for a command-line flag that sets the same value)."""
    return next(f.metadata[RANGE] for f in fields(cls) if f.name == name)


def flag_problem(flag: str, value: float, r: Range) -> str | None:
    """A command-line flag's value outside `r`, in the config check's words; None when it holds."""
    return None if r.holds(value) else f"{flag}={value} must be in {r} ({r.why})"
