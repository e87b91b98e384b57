"""Every metric name, built and parsed in one place: the names of docs/design.md ("Metric names"), which
W&B, metrics.jsonl, alerts, plots, compare and report share. Builders return the slash-namespaced key;
parsers take a key back apart and return None for a key of another shape (no regex elsewhere)."""

from __future__ import annotations

from typing import NamedTuple

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
TRAIN_EPOCH = "train/epoch"
TRAIN_EPOCH_SECONDS = "train/epoch_seconds"
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
EPOCH = "epoch"
"""The epoch just ended, logged with the epoch end's validation (the row's `train/epoch` is the next one)."""
TASK_INDEX = "task/index"
"""The task just ended (0-based int), in the one row a run with a task sequence logs at each task's end: with
the three numbers below and that boundary's `liveness/<site>/dead_ratio` and `liveness/<site>/dormant_ratio`."""
TASK_TRAIN_LOSS = "task/train_loss"
"""Mean training loss of the ended task's last log window."""
TASK_VAL_LOSS = "task/val_loss"
"""The ended task's own held-out loss at its end (before the boundary's revival)."""
TASK_WEIGHT_NORM = "task/weight_norm"
"""L2 norm of all trainable weights at the task's end (before the boundary's revival)."""
TASK_KEYS = (TASK_INDEX, TASK_TRAIN_LOSS, TASK_VAL_LOSS, TASK_WEIGHT_NORM)
STEP = "step"
"""Not a metric: metrics.jsonl's step of each row."""
PLAIN_KEYS = (
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_GRAD_NORM,
    TRAIN_TOKENS_PER_S,
    TRAIN_EPOCH,
    TRAIN_EPOCH_SECONDS,
    VAL_LOSS,
    VAL_PPL,
    EPOCH,
    *TASK_KEYS,
)

LIVENESS = "liveness"
CAPACITY = "capacity"
REVIVAL = "revival"
ALERTS = "alerts"
PLOTS = "plots"
SWEEP = "sweep"

DEAD_RATIO = "dead_ratio"
DORMANT_RATIO = "dormant_ratio"
FREQUENCY = "frequency"
"""W&B histogram of a layer's per-unit firing frequencies."""
ACTIVATIONS = "activations"
"""W&B histogram of a layer's activation values."""
LAYER_NAMES = (DEAD_RATIO, DORMANT_RATIO, FREQUENCY, ACTIVATIONS)
"""The names under `liveness/<site>/layer_<i>/`."""

REVIVAL_COUNT = "revival/count"
"""Present in the row of each revival: it marks one."""
_BEFORE, _AFTER = "dead_ratio_before", "dead_ratio_after"
_LAYER_PREFIX = "layer_"


def _layer_part(layer: int) -> str:
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"a layer is a non-negative int, got {layer!r}")
    return f"{_LAYER_PREFIX}{layer}"


def _parse_layer_part(part: str) -> int | None:
    digits = part[len(_LAYER_PREFIX) :]
    if not part.startswith(_LAYER_PREFIX) or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


def _name(part: str, what: str) -> str:
    if not part or "/" in part:
        raise ValueError(f"a {what} is one non-empty key part without '/', got {part!r}")
    return part


# ------------------------------------------------------------------------------------------------ builders


def site_key(site: str, name: str) -> str:
    """`liveness/<site>/<name>`: a number over all layers of a site."""
    return f"{LIVENESS}/{_name(site, 'site')}/{_name(name, 'name')}"


def layer_key(site: str, layer: int, name: str) -> str:
    """`liveness/<site>/layer_<i>/<name>`: a per-layer number (or W&B histogram) of a site."""
    return f"{LIVENESS}/{_name(site, 'site')}/{_layer_part(layer)}/{_name(name, 'name')}"


def dead_ratio_key(site: str, layer: int | None = None) -> str:
    """`liveness/<site>/dead_ratio` (all layers) or `liveness/<site>/layer_<i>/dead_ratio`."""
    return site_key(site, DEAD_RATIO) if layer is None else layer_key(site, layer, DEAD_RATIO)


def dormant_ratio_key(site: str) -> str:
    """`liveness/<site>/dormant_ratio`: the share of a site's units dormant, all layers (a task boundary's)."""
    return site_key(site, DORMANT_RATIO)


def capacity_key(name: str) -> str:
    return f"{CAPACITY}/{_name(name, 'name')}"


def revival_key(name: str, layer: int | None = None) -> str:
    """`revival/<name>` (a total of one revival) or `revival/layer_<i>/<name>`."""
    if layer is None:
        return f"{REVIVAL}/{_name(name, 'name')}"
    return f"{REVIVAL}/{_layer_part(layer)}/{_name(name, 'name')}"


def dead_ratio_before_key(site: str) -> str:
    """`revival/dead_ratio_before/<site>`: the dead ratio a revival decided from."""
    return f"{REVIVAL}/{_BEFORE}/{_name(site, 'site')}"


def dead_ratio_after_key(site: str) -> str:
    """`revival/dead_ratio_after/<site>`: measured at the end of a run, after its last revival."""
    return f"{REVIVAL}/{_AFTER}/{_name(site, 'site')}"


def alert_key(rule: str) -> str:
    """`alerts/<rule>`: the number of watched layers above the rule's threshold."""
    return f"{ALERTS}/{_name(rule, 'rule name')}"


def plot_key(name: str) -> str:
    """`plots/<name>`: a W&B image."""
    return f"{PLOTS}/{_name(name, 'name')}"


def sweep_key(name: str) -> str:
    """`sweep/<name>`: a figure or table of a sweep's W&B summary run (not parsed: nothing reads that run
    back)."""
    return f"{SWEEP}/{_name(name, 'name')}"


# ------------------------------------------------------------------------------------------------ parsers


def parse_layer_key(key: str) -> tuple[str, int, str] | None:
    """(site, layer, name) of `liveness/<site>/layer_<i>/<name>`, else None."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != LIVENESS or not parts[1] or not parts[3]:
        return None
    layer = _parse_layer_part(parts[2])
    return None if layer is None else (parts[1], layer, parts[3])


def parse_site_key(key: str) -> tuple[str, str] | None:
    """(site, name) of `liveness/<site>/<name>`, else None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != LIVENESS or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def parse_dead_ratio_key(key: str) -> tuple[str, int | None] | None:
    """(site, layer or None for all layers) of a dead-ratio key, else None."""
    if (m := parse_layer_key(key)) is not None:
        return (m[0], m[1]) if m[2] == DEAD_RATIO else None
    if (s := parse_site_key(key)) is not None:
        return (s[0], None) if s[1] == DEAD_RATIO else None
    return None


def parse_capacity_key(key: str) -> str | None:
    return _one_below(key, CAPACITY)


def parse_alert_key(key: str) -> str | None:
    """The rule name of `alerts/<rule>`, else None."""
    return _one_below(key, ALERTS)


def parse_plot_key(key: str) -> str | None:
    return _one_below(key, PLOTS)


def parse_revival_key(key: str) -> tuple[str, int | None] | None:
    """(name, layer or None) of `revival/<name>` or `revival/layer_<i>/<name>`, else None (the
    before/after dead ratios per site are `parse_dead_ratio_before_key`'s and `..._after_key`'s)."""
    parts = key.split("/")
    if parts[0] != REVIVAL or not all(parts[1:]):
        return None
    if len(parts) == 2:
        return parts[1], None
    if len(parts) == 3 and (layer := _parse_layer_part(parts[1])) is not None:
        return parts[2], layer
    return None


def parse_dead_ratio_before_key(key: str) -> str | None:
    """The site of `revival/dead_ratio_before/<site>`, else None."""
    return _one_below(key, f"{REVIVAL}/{_BEFORE}")


def parse_dead_ratio_after_key(key: str) -> str | None:
    """The site of `revival/dead_ratio_after/<site>`, else None."""
    return _one_below(key, f"{REVIVAL}/{_AFTER}")


def _one_below(key: str, prefix: str) -> str | None:
    rest = key[len(prefix) + 1 :] if key.startswith(prefix + "/") else ""
    return rest if rest and "/" not in rest else None


class MetricKey(NamedTuple):
    """A key taken apart: `kind` is one of plain, liveness_site, liveness_layer, capacity, revival,
    revival_layer, dead_ratio_before, dead_ratio_after, alert, plot."""

    kind: str
    name: str
    site: str | None = None
    layer: int | None = None


def parse_key(key: str) -> MetricKey | None:
    """Any metric name of the design, taken apart; None for a key the design does not name."""
    if key in PLAIN_KEYS:
        return MetricKey("plain", key)
    if (m := parse_layer_key(key)) is not None:
        return MetricKey("liveness_layer", m[2], site=m[0], layer=m[1])
    if (s := parse_site_key(key)) is not None:
        return MetricKey("liveness_site", s[1], site=s[0])
    if (name := parse_capacity_key(key)) is not None:
        return MetricKey("capacity", name)
    if (site := parse_dead_ratio_before_key(key)) is not None:
        return MetricKey("dead_ratio_before", DEAD_RATIO, site=site)
    if (site := parse_dead_ratio_after_key(key)) is not None:
        return MetricKey("dead_ratio_after", DEAD_RATIO, site=site)
    if (r := parse_revival_key(key)) is not None:
        return MetricKey("revival" if r[1] is None else "revival_layer", r[0], layer=r[1])
    if (rule := parse_alert_key(key)) is not None:
        return MetricKey("alert", rule)
    if (name := parse_plot_key(key)) is not None:
        return MetricKey("plot", name)
    return None
