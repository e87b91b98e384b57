"""Which settings a resumed run may change: the table of docs/design.md ("Resuming"), checked before
anything is written.

A checkpoint carries the resolved config it was saved with. Each setting a resume changes is either refused
(it would silently change what the checkpoint means: the model, the data and its order, the optimizer's
state, the liveness counts or the revival masks), allowed with one warning (it takes effect from the resumed
step on), or allowed silently (it changes where output goes or how it looks, not the run).
"""

from __future__ import annotations

import copy
from typing import Any

from reviveformer.config import Config, to_dict, upgrade_revival_keys
from reviveformer.errors import CheckpointError

# Allowed with a warning: read afresh at every use, so a new value acts from the resumed step on.
ALLOWED = (
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.checkpoint_limit",
    "train.grad_clip",
    "train.max_bad_steps",
    "liveness.dead_frequency",
    "liveness.tau",
    "liveness.sample_every",
    "liveness.histogram_every",
    "liveness.histogram_bins",
    "liveness.frequency_histogram_every",
    "liveness.counting",
    "alerts.",
    "revival.every_steps",
    "revival.synaptic_stripping.fraction",
    "revival.synaptic_stripping.strip_bias",
    "revival.redo.tau",
    "revival.grama.tau",
    "data.cache_dir",
)
# Allowed silently: where the output goes and how it is shown.
# model.trust_remote_code is a permission for one load (init_from), not something the checkpoint holds.
SILENT = ("train.output_dir", "train.resume", "train.progress", "wandb.", "model.trust_remote_code")
# Everything else is refused (a setting added later is refused until it is placed in the table).


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():  # lists (alerts.rules, liveness.sites) stay whole: one key each
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _matches(key: str, table: tuple[str, ...]) -> bool:
    return any(key == t or (t.endswith(".") and key.startswith(t)) for t in table)


def compare_settings(saved: dict[str, Any], new: dict[str, Any], checkpoint: str) -> list[str]:
    """Raise CheckpointError naming every refused change (key, saved value, new value); return the allowed
    changes, one line each, for the caller's single warning. Both configs are resolved `to_dict` trees."""
    # a checkpoint saved before each revival method had its own section holds the old flat keys
    saved = upgrade_revival_keys(copy.deepcopy(saved), f"checkpoint {checkpoint}", warn=False)
    a, b = flatten(saved), flatten(new)
    defaults = flatten(to_dict(Config()))
    refused, allowed = [], []
    for key in sorted(a.keys() | b.keys()):
        old, cur = a.get(key), b.get(key)
        if old == cur or _matches(key, SILENT):
            continue
        if key not in a and key in defaults and cur == defaults[key]:
            # a key added after the checkpoint was saved, at its default: the value the code that saved the
            # checkpoint used (each new key's default keeps the old behaviour), so nothing changes
            continue
        line = f"{key}: {old!r} -> {cur!r}"
        (allowed if _matches(key, ALLOWED) else refused).append(line)
    if refused:
        raise CheckpointError(
            f"cannot resume from {checkpoint} with changed settings: "
            + "; ".join(refused)
            + " (saved -> new). "
            "These change what the checkpoint means (model, data and its order, optimizer, liveness counts or "
            "revival masks); resume with the saved values, or start a new run in another train.output_dir. "
            "Nothing was changed."
        )
    return allowed
