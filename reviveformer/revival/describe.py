"""The words for a run's revivals: each `Reviver` describes its own events (`Reviver.describe`,
`describe_totals`), so the console line during training, the summary's totals and the report pages say the
same thing.

A run folder's method is known by its `revival.method`: a built-in is described by its class, anything else (a
plug-in `package.module:Class`, never imported here: a run folder's files must not run code) by the base
`Reviver`, under its name as written. Above the registry (revival/__init__), which imports the methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from reviveformer.revival import REVIVERS, Reviver
from reviveformer.revival.events import RevivalEvent


def describer(method: str | None) -> tuple[type[Reviver], str]:
    """The class that describes the revivals of a run with this `revival.method`, and the method's name in
    words: a built-in's class and `title`; anything else the base `Reviver`, named as written."""
    cls = REVIVERS.get(method or "")
    if cls is None:
        return Reviver, method or "unknown"
    return cls, cls.title or cls.name


def event_line(method: str | None, event: RevivalEvent, when: str = "") -> str:
    """The console line of one revival of a run with this `revival.method`."""
    cls, name = describer(method)
    return cls.describe(event, name, when)


def totals_line(method: str | None, events: Sequence[RevivalEvent]) -> str:
    """The summary's revival line of a run with this `revival.method` (events: at least one)."""
    cls, name = describer(method)
    return cls.describe_totals(events, name)
