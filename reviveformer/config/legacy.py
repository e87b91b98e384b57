"""Legacy keys: the flat revival keys of configs written before each method had its own section, moved into
their sections once, as a layer is read (recipes, overrides, a saved config.yaml, a checkpoint's config)."""

from __future__ import annotations

import logging
from typing import Any

from reviveformer.errors import ConfigError

log = logging.getLogger("reviveformer")

# The flat revival keys of configs saved before each method had its own section, and where they live now.
LEGACY_REVIVAL_KEYS = {
    "fraction": ("synaptic_stripping",),
    "persistent": ("synaptic_stripping",),
    "strip_bias": ("synaptic_stripping",),
    "tau": ("redo", "grama"),
}


def upgrade_revival_keys(layer: Any, where: str, *, warn: bool = True) -> Any:
    """Move the flat revival keys of configs written before each method had its own section (`revival.fraction`,
    `persistent`, `strip_bias`, `tau`) into their sections, in place, once, as a layer is read; returns `layer`.
    `tau` was shared by ReDo and GraMa, so it sets both. One warning names the moves (`warn`)."""
    revival = layer.get("revival") if isinstance(layer, dict) else None
    if not isinstance(revival, dict):
        return layer
    moved = []
    for old, sections in LEGACY_REVIVAL_KEYS.items():
        if old not in revival:
            continue
        value = revival.pop(old)
        for name in sections:
            section = revival.setdefault(name, {})
            if not isinstance(section, dict):
                continue  # a section that is not a mapping: check_shape names it
            if old in section and section[old] != value:
                raise ConfigError(
                    f"{where}: revival.{old} (the old flat key, read as revival.{name}.{old}) and "
                    f"revival.{name}.{old} disagree; give only revival.{name}.{old}"
                )
            section[old] = value
        moved.append(f"revival.{old} as {' and '.join(f'revival.{n}.{old}' for n in sections)}")
    if moved and warn:
        log.warning(
            "%s: old flat revival keys read in their method's section: %s (write them there; "
            "docs/design.md, config keys)",
            where,
            "; ".join(moved),
        )
    return layer
