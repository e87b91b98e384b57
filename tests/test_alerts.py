"""AlertManager: fire once per crossing, re-arm on recovery, sinks, rate limit, state round trip."""

from __future__ import annotations

import json
import logging

import pytest

from reviveformer.alerts import (
    Alert,
    AlertManager,
    JsonlAlertSink,
    RateLimitedSink,
    console_sink,
    titled_alert_sink,
)
from reviveformer.config import AlertRule, AlertsConfig


def dead(site: str = "mlp_post", metric: str = "dead_ratio", **by_layer: float) -> dict[str, float]:
    """Metrics as the monitor logs them: dead(l0=0.1, l1=0.5) -> liveness/<site>/layer_<i>/<metric>."""
    return {f"liveness/{site}/layer_{k[1:]}/{metric}": v for k, v in by_layer.items()}


def manager(*rules: AlertRule) -> tuple[AlertManager, list[Alert]]:
    received: list[Alert] = []
    return AlertManager(AlertsConfig(rules=list(rules)), sinks=[received.append]), received


def test_fires_once_on_crossing_not_while_above() -> None:
    am, got = manager(AlertRule(name="dead_mlp", above=0.3))
    out = am.check(dead(l0=0.1, l1=0.2), step=10)
    assert out.alerts == [] and got == []
    assert out.metrics == {"alerts/dead_mlp": 0.0}

    out = am.check(dead(l0=0.1, l1=0.42), step=20)
    assert [(a.layer, a.value, a.step) for a in out.alerts] == [(1, 0.42, 20)]
    assert got == out.alerts

    out = am.check(dead(l0=0.1, l1=0.5), step=30)  # still above: no new alert
    assert out.alerts == [] and len(got) == 1
    assert out.metrics == {"alerts/dead_mlp": 1.0}


def test_rearms_after_recovery_and_fires_again() -> None:
    am, got = manager(AlertRule(name="r", above=0.3))
    am.check(dead(l0=0.4), step=1)
    am.check(dead(l0=0.3), step=2)  # back to <= threshold: re-armed
    out = am.check(dead(l0=0.35), step=3)
    assert [(a.layer, a.step) for a in got] == [(0, 1), (0, 3)]
    assert out.metrics["alerts/r"] == 1.0


def test_exactly_at_threshold_does_not_trip() -> None:
    am, got = manager(AlertRule(name="r", above=0.25))
    out = am.check(dead(l0=0.25, l1=0.25), step=1)
    assert got == [] and out.metrics["alerts/r"] == 0.0


def test_layers_filter() -> None:
    am, got = manager(AlertRule(name="r", above=0.3, layers=[1, 3]))
    out = am.check(dead(l0=0.9, l1=0.9, l2=0.9, l3=0.1), step=5)
    assert [a.layer for a in got] == [1]
    # Layers 0 and 2 are above but not watched.
    assert out.metrics["alerts/r"] == 1.0


def test_two_rules_independent() -> None:
    a = AlertRule(name="dead_post", site="mlp_post", metric="dead_ratio", above=0.3, action="revive")
    b = AlertRule(name="dormant_attn", site="attn_out", metric="dormant_ratio", above=0.5, action="stop")
    am, got = manager(a, b)
    m = dead(l0=0.4, l1=0.1) | dead("attn_out", "dormant_ratio", l0=0.2, l1=0.6)
    m |= dead("mlp_pre", l0=0.99)  # another site: watched by nobody
    out = am.check(m, step=7, when="epoch_end")
    assert sorted((x.rule, x.layer) for x in got) == [("dead_post", 0), ("dormant_attn", 1)]
    assert out.actions == {"revive", "stop"} and out.should_stop and out.should_revive
    assert out.metrics == {"alerts/dead_post": 1.0, "alerts/dormant_attn": 1.0}

    # Only rule a's layer recovers and re-crosses; rule b stays above and stays silent.
    am.check(dead(l0=0.1) | dead("attn_out", "dormant_ratio", l1=0.7), step=8)
    out = am.check(dead(l0=0.5) | dead("attn_out", "dormant_ratio", l1=0.7), step=9)
    assert [(x.rule, x.layer) for x in out.alerts] == [("dead_post", 0)]
    assert out.actions == {"revive"}


def test_rule_without_its_metric_keeps_state_and_logs_nothing() -> None:
    am, got = manager(AlertRule(name="r", metric="dormant_ratio", above=0.3))
    am.check(dead(metric="dormant_ratio", l0=0.5), step=1)
    out = am.check(dead(l0=0.0), step=2)  # only dead_ratio logged: dormant state untouched
    assert out.metrics == {} and out.alerts == []
    out = am.check(dead(metric="dormant_ratio", l0=0.5), step=3)
    assert out.alerts == [] and len(got) == 1


def test_action_none_requests_nothing() -> None:
    am, _ = manager(AlertRule(name="r", above=0.1, action="none"))
    out = am.check(dead(l0=0.9), step=1)
    assert len(out.alerts) == 1 and out.actions == set() and not out.should_stop


def test_message_names_layer_value_threshold() -> None:
    am, got = manager(AlertRule(name="dead_mlp", site="mlp_post", above=0.3))
    am.check(dead(l1=0.42), step=120)
    assert got[0].message == "alert dead_mlp: mlp_post layer 1 dead_ratio 0.42 > 0.30 at step 120 (train)"
    assert "\n" not in got[0].message


def test_console_sink_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    am = AlertManager(AlertsConfig(rules=[AlertRule(name="r", above=0.3)]), sinks=[console_sink])
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        am.check(dead(l2=0.75), step=4)
    assert any("layer 2" in r.getMessage() and "0.75 > 0.30" in r.getMessage() for r in caplog.records)


def test_failing_sink_does_not_stop_others(caplog: pytest.LogCaptureFixture) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("network down")

    got: list[Alert] = []
    am = AlertManager(AlertsConfig(rules=[AlertRule(name="r", above=0.3)]), sinks=[broken, got.append])
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        am.check(dead(l0=0.5), step=1)
    assert len(got) == 1 and "network down" in caplog.text


def test_jsonl_sink_writes_valid_lines(tmp_path) -> None:
    path = tmp_path / "run" / "alerts.jsonl"
    am = AlertManager(AlertsConfig(rules=[AlertRule(name="r", above=0.3)]), sinks=[JsonlAlertSink(path)])
    am.check(dead(l0=0.4, l1=0.6), step=3)
    am.check(dead(l0=0.1, l1=0.6), step=4)
    am.check(dead(l0=0.31, l1=0.6), step=5)
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["layer"], r["step"], r["value"]) for r in records] == [(0, 3, 0.4), (1, 3, 0.6), (0, 5, 0.31)]
    assert records[0]["rule"] == "r" and records[0]["threshold"] == 0.3 and "time" in records[0]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _alert(rule: str, layer: int = 0) -> Alert:
    return Alert(rule, "mlp_post", "dead_ratio", layer, 0.5, 0.3, 1, "train", "none", f"m{rule}{layer}")


def test_rate_limited_sink_with_fake_clock() -> None:
    clock = FakeClock()
    got: list[Alert] = []
    sink = RateLimitedSink(got.append, wait_s=300.0, clock=clock)
    sink(_alert("a", 0))  # t=1000: forwarded
    sink(_alert("a", 1))  # same rule, 0 s later: held
    sink(_alert("b", 0))  # other rule: forwarded
    clock.t = 1299.0
    sink(_alert("a", 2))  # 299 s after the last forward: held
    clock.t = 1300.0
    sink(_alert("a", 3))  # 300 s: forwarded, says 2 were held back
    clock.t = 1450.0
    sink(_alert("a", 4))  # 150 s after t=1300: held
    assert [(x.rule, x.layer) for x in got] == [("a", 0), ("b", 0), ("a", 3)]
    assert got[0].message == "ma0"
    assert got[2].message == "ma3 (+2 more of this rule held back)"
    assert sink.suppressed == {"a": 1}


def test_titled_alert_sink_adapts_to_title_text_level() -> None:
    calls: list[tuple[str, str, str]] = []
    sink = titled_alert_sink(lambda title, text, level: calls.append((title, text, level)))
    sink(_alert("a", 2))
    stop = Alert("s", "attn_out", "dead_ratio", 0, 0.9, 0.5, 1, "train", "stop", "msg")
    sink(stop)
    assert calls == [
        ("reviveformer a: mlp_post layer 2", "ma2", "WARN"),
        ("reviveformer s: attn_out layer 0", "msg", "ERROR"),
    ]


def test_state_round_trip_does_not_refire() -> None:
    rules = [AlertRule(name="r", above=0.3), AlertRule(name="q", above=0.5)]
    am, got = manager(*rules)
    am.check(dead(l0=0.4, l1=0.1), step=1)
    state = json.loads(json.dumps(am.state_dict()))  # survives a JSON checkpoint file
    assert state == {"above": {"r": [0], "q": []}}

    restored, got2 = manager(*rules)
    restored.load_state_dict(state)
    out = restored.check(dead(l0=0.45, l1=0.6), step=2)
    # Layer 0 was already above for r: silent. Layer 1 crosses r (0.3) and q (0.5).
    assert sorted((a.rule, a.layer) for a in got2) == [("q", 1), ("r", 1)]
    assert out.metrics == {"alerts/r": 2.0, "alerts/q": 1.0}

    fresh, got3 = manager(*rules)  # without the state, layer 0 would fire again
    fresh.check(dead(l0=0.45, l1=0.6), step=2)
    assert sorted((a.rule, a.layer) for a in got3) == [("q", 1), ("r", 0), ("r", 1)]


def test_load_state_ignores_unknown_rules_and_rejects_garbage() -> None:
    am, got = manager(AlertRule(name="r", above=0.3))
    am.load_state_dict({"above": {"gone": [0], "r": [2]}})
    assert am.state_dict() == {"above": {"r": [2]}}
    with pytest.raises(ValueError, match="above"):
        am.load_state_dict({"nope": 1})


def test_alert_count_metric_counts_layers_above() -> None:
    am, _ = manager(AlertRule(name="dead_mlp", above=0.3))
    out = am.check(dead(l0=0.31, l1=0.3, l2=0.9, l3=0.0, l4=0.5), step=1)
    assert out.metrics == {"alerts/dead_mlp": 3.0}  # layers 0, 2, 4
    out = am.check(dead(l0=0.2, l1=0.3, l2=0.9, l3=0.0, l4=0.5), step=2)
    assert out.metrics == {"alerts/dead_mlp": 2.0}  # layer 0 recovered
    assert isinstance(out.metrics["alerts/dead_mlp"], float)


def test_nan_value_keeps_state() -> None:
    am, got = manager(AlertRule(name="r", above=0.3))
    am.check(dead(l0=0.5), step=1)
    am.check(dead(l0=float("nan")), step=2)
    am.check(dead(l0=0.5), step=3)
    assert len(got) == 1
