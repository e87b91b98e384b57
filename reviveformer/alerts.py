"""Alerts on per-layer liveness metrics: fire once when a layer crosses a threshold, re-arm on recovery.

`AlertManager.check` reads the metrics the monitor logs (`liveness/<site>/layer_<i>/<metric>`), decides
which rules fired, and hands each fired `Alert` to the sinks it was built with (console, `alerts.jsonl`,
a rate-limited `wandb.alert`). It never acts itself: the `actions` of the outcome ("revive", "stop") are
for the trainer to carry out, so this module knows nothing about the model, the loop or W&B.

The contract: docs/design.md, "Interfaces" (alerts.rules) and the metric names.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from reviveformer import metric_keys
from reviveformer.config import AlertRule, AlertsConfig

logger = logging.getLogger("reviveformer")

AlertSink = Callable[["Alert"], None]
"""Something that receives each fired alert (console, file, W&B)."""


@dataclass(frozen=True)
class Alert:
    """One rule tripping for one layer: what crossed, where, when, and what the rule asks for."""

    rule: str
    site: str
    metric: str
    layer: int
    value: float
    threshold: float
    step: int
    when: str
    action: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the alert's fields."""
        return asdict(self)


@dataclass
class AlertOutcome:
    """What one `AlertManager.check` found.

    `alerts`: the alerts fired now (crossings only). `metrics`: `alerts/<rule>` = number of watched layers
    above the threshold now, for every rule whose metric was present. `actions`: the non-`none` actions of
    the rules that fired now.
    """

    alerts: list[Alert] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    actions: set[str] = field(default_factory=set)

    @property
    def should_stop(self) -> bool:
        """A rule with action `stop` fired now."""
        return "stop" in self.actions

    @property
    def should_revive(self) -> bool:
        """A rule with action `revive` fired now."""
        return "revive" in self.actions


def format_message(rule: AlertRule, layer: int, value: float, step: int, when: str) -> str:
    """The one-line human message of an alert, naming the layer, the value and the threshold."""
    msg = (
        f"alert {rule.name}: {rule.site} layer {layer} {rule.metric} {value:.2f} > {rule.above:.2f} "
        f"at step {step} ({when})"
    )
    if rule.action != "none":
        msg += f"; action: {rule.action}"
    return msg


def layer_values(metrics: dict[str, float], site: str, metric: str) -> dict[int, float]:
    """The per-layer values of `liveness/<site>/layer_<i>/<metric>` present in `metrics`, by layer."""
    out: dict[int, float] = {}
    for key, value in metrics.items():
        m = metric_keys.parse_layer_key(key)
        if m is not None and m[0] == site and m[2] == metric:
            out[m[1]] = float(value)
    return out


class AlertManager:
    """Checks alert rules against logged liveness metrics and dispatches fired alerts to sinks.

    State is per (rule, layer): whether the layer was above the rule's threshold at the last check that
    measured it. An alert fires on the crossing (not above -> above), not on every check while above; a
    check at or below the threshold re-arms it. Layers absent from a check keep their state, so a train log
    that lacks a metric does not re-arm anything.

    In a distributed run every process should call `check` with the same reduced metrics (so all agree on
    `actions`), and only the main process should be given sinks.
    """

    def __init__(self, cfg: AlertsConfig, sinks: Iterable[AlertSink] = ()) -> None:
        self.rules: list[AlertRule] = list(cfg.rules)
        self.sinks: list[AlertSink] = list(sinks)
        self._above: dict[str, set[int]] = {r.name: set() for r in self.rules}

    def check(self, metrics: dict[str, float], step: int, when: str = "train") -> AlertOutcome:
        """Evaluate every rule on `metrics` (one log call's scalars), send fired alerts to the sinks."""
        outcome = AlertOutcome()
        for rule in self.rules:
            values = layer_values(metrics, rule.site, rule.metric)
            if rule.layers is not None:
                watched = set(rule.layers)
                values = {layer: v for layer, v in values.items() if layer in watched}
            if not values:
                continue  # this check did not measure what the rule watches
            above = self._above[rule.name]
            for layer in sorted(values):
                value = values[layer]
                if not math.isfinite(value):
                    continue  # a NaN ratio says nothing about crossing; keep the state
                if value > rule.above:
                    if layer not in above:
                        above.add(layer)
                        outcome.alerts.append(
                            Alert(
                                rule=rule.name,
                                site=rule.site,
                                metric=rule.metric,
                                layer=layer,
                                value=value,
                                threshold=rule.above,
                                step=step,
                                when=when,
                                action=rule.action,
                                message=format_message(rule, layer, value, step, when),
                            )
                        )
                        if rule.action != "none":
                            outcome.actions.add(rule.action)
                else:
                    above.discard(layer)
            # Counts only watched layers; a layer not in this check but still above counts too.
            outcome.metrics[metric_keys.alert_key(rule.name)] = float(len(above))
        for alert in outcome.alerts:
            self._dispatch(alert)
        return outcome

    def _dispatch(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink(alert)
            except Exception as e:  # an alert channel failing must not stop training
                logger.warning("alert sink %r failed on %s: %s", sink, alert.rule, e)

    def state_dict(self) -> dict[str, Any]:
        """The crossing state: for each rule, the layers above its threshold at their last check."""
        return {"above": {name: sorted(layers) for name, layers in self._above.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; rules no longer configured are dropped, new rules start armed."""
        above = state.get("above")
        if not isinstance(above, dict):
            raise ValueError(f"alert state must hold an 'above' mapping of rule -> layers, got {state!r}")
        for name in self._above:
            self._above[name] = {int(layer) for layer in above.get(name, [])}


def console_sink(alert: Alert) -> None:
    """Write the alert's message as a warning on the `reviveformer` logger."""
    logger.warning(alert.message)


class JsonlAlertSink:
    """Append one JSON object per alert to a file (the run's `alerts.jsonl`), flushed line by line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, alert: Alert) -> None:
        record = {"time": time.time(), **alert.to_dict()}
        # Opened per alert: alerts are rare, and a killed run then never leaves a half-buffered line.
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


class RateLimitedSink:
    """Forward at most one alert per rule per `wait_s` seconds to `inner`; the rest are counted.

    Meant for `wandb.alert`, which W&B itself throttles and which should not page anyone once per layer.
    A forwarded alert's message says how many of its rule's alerts were held back since the last one.
    """

    def __init__(self, inner: AlertSink, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if wait_s < 0:
            raise ValueError(f"wait_s={wait_s} must be >= 0")
        self.inner = inner
        self.wait_s = wait_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, alert: Alert) -> None:
        now = self.clock()
        last = self._last.get(alert.rule)
        if last is not None and now - last < self.wait_s:
            self.suppressed[alert.rule] = self.suppressed.get(alert.rule, 0) + 1
            return
        held = self.suppressed.pop(alert.rule, 0)
        if held:
            alert = replace(alert, message=f"{alert.message} (+{held} more of this rule held back)")
        self._last[alert.rule] = now
        self.inner(alert)


def titled_alert_sink(send: Callable[[str, str, str], None]) -> AlertSink:
    """Adapt a `(title, text, level) -> None` callable (the tracking module's `wandb.alert`) to a sink.

    Level is "ERROR" for a rule that stops training, otherwise "WARN" (W&B's AlertLevel names).
    """

    def sink(alert: Alert) -> None:
        level = "ERROR" if alert.action == "stop" else "WARN"
        send(f"reviveformer {alert.rule}: {alert.site} layer {alert.layer}", alert.message, level)

    return sink
