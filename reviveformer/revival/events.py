"""A revival as its metrics give it (`RevivalEvent`), read from a `revive` return value or from metrics.jsonl,
the data of the words that each `Reviver` gives its own events (`Reviver.describe`, `describe_totals`;
revival/describe.py chooses the describer of a run folder's method).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reviveformer import metric_keys


@dataclass
class RevivalEvent:
    """One revival pass, as its metrics (`revival/...`, design.md) give it; a count the method does not log
    is 0."""

    step: int
    number: int
    """revival/count: 1 for the run's first revival."""
    dead_units: int
    revived_units: int
    """Units dead (stripping) or dormant (ReDo) at the previous revival and not any more."""
    stripped_now: int = 0
    pruned_total: int = 0
    stripped_total: int = 0
    dormant_units: int = 0
    """ReDo: units re-initialised by this revival."""
    reinitialised_total: int = 0

    def heading(self, name: str, when: str = "") -> str:
        """The start of its console line: which revival, where, by which method (`name`)."""
        return f"revival {self.number} at step {self.step}" + (f" ({when})" if when else "") + f", {name}"

    def since(self) -> str:
        """What changed since the previous revival (the end of its console line)."""
        if self.number == 1:
            return "first revival, nothing to compare with yet"
        return f"{self.revived_units:,} units revived since the previous revival"


def revival_event(metrics: Mapping[str, Any], step: int) -> RevivalEvent | None:
    """The event of one revival's metrics (a `revive` return value or a metrics.jsonl row); None if none."""
    if metric_keys.REVIVAL_COUNT not in metrics:
        return None

    def n(key: str) -> int:
        return int(round(float(metrics.get(metric_keys.revival_key(key), 0) or 0)))

    return RevivalEvent(
        step=step,
        number=n("count"),
        dead_units=n("dead_units"),
        revived_units=n("revived_units"),
        stripped_now=n("stripped_now"),
        pruned_total=n("pruned_total"),
        stripped_total=n("stripped_total"),
        dormant_units=n("dormant_units"),
        reinitialised_total=n("reinitialised_total"),
    )


def revival_events(rows: Sequence[Mapping[str, Any]]) -> list[RevivalEvent]:
    """Every revival of a run, by step (a resumed run logs a step again: the last row of a step counts)."""
    by_step: dict[int, RevivalEvent] = {}
    for row in rows:
        if "step" in row and (event := revival_event(row, int(row["step"]))) is not None:
            by_step[event.step] = event
    return [by_step[s] for s in sorted(by_step)]
