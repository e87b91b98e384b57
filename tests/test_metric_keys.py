"""reviveformer.metric_keys: the design's metric names, built and parsed in one place."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from reviveformer import metric_keys as mk
from reviveformer.config import SITES, load_config
from reviveformer.trainer import train

LAYERS = range(0, 13)


def test_builders_write_the_design_names():
    """Literal strings from docs/design.md's "Metric names", written out by hand."""
    assert mk.dead_ratio_key("mlp_post") == "liveness/mlp_post/dead_ratio"
    assert mk.dead_ratio_key("attn_out", 3) == "liveness/attn_out/layer_3/dead_ratio"
    assert mk.layer_key("mlp_pre", 11, "dormant_ratio") == "liveness/mlp_pre/layer_11/dormant_ratio"
    assert mk.layer_key("mlp_post", 0, "frequency") == "liveness/mlp_post/layer_0/frequency"
    assert mk.layer_key("mlp_post", 1, "activations") == "liveness/mlp_post/layer_1/activations"
    assert mk.capacity_key("alive_fraction") == "capacity/alive_fraction"
    assert mk.revival_key("stripped_total") == "revival/stripped_total"
    assert mk.revival_key("revived_units", 2) == "revival/layer_2/revived_units"
    assert mk.dead_ratio_before_key("mlp_post") == "revival/dead_ratio_before/mlp_post"
    assert mk.dead_ratio_after_key("attn_out") == "revival/dead_ratio_after/attn_out"
    assert mk.alert_key("dead_mlp") == "alerts/dead_mlp"
    assert mk.plot_key("frequency_heatmap") == "plots/frequency_heatmap"
    assert (mk.TRAIN_LOSS, mk.VAL_PPL, mk.TRAIN_EPOCH_SECONDS) == (
        "train/loss",
        "val/ppl",
        "train/epoch_seconds",
    )


@pytest.mark.parametrize("site", SITES)
def test_layer_keys_round_trip(site):
    for layer in LAYERS:
        for name in mk.LAYER_NAMES:
            key = mk.layer_key(site, layer, name)
            assert mk.parse_layer_key(key) == (site, layer, name)
            assert mk.parse_key(key) == mk.MetricKey("liveness_layer", name, site=site, layer=layer)
            assert mk.parse_site_key(key) is None
        assert mk.parse_dead_ratio_key(mk.dead_ratio_key(site, layer)) == (site, layer)
        assert mk.parse_dead_ratio_key(mk.layer_key(site, layer, "dormant_ratio")) is None
    assert mk.parse_dead_ratio_key(mk.dead_ratio_key(site)) == (site, None)
    assert mk.parse_site_key(mk.dead_ratio_key(site)) == (site, "dead_ratio")
    assert mk.parse_layer_key(mk.dead_ratio_key(site)) is None
    assert mk.parse_dead_ratio_before_key(mk.dead_ratio_before_key(site)) == site
    assert mk.parse_dead_ratio_after_key(mk.dead_ratio_after_key(site)) == site
    assert mk.parse_key(mk.dead_ratio_before_key(site)).kind == "dead_ratio_before"
    assert mk.parse_revival_key(mk.dead_ratio_before_key(site)) is None


def test_revival_capacity_alert_plot_keys_round_trip():
    for name in ("dead_units", "stripped_now", "pruned_total", "revived_units", "dormant_units"):
        assert mk.parse_revival_key(mk.revival_key(name)) == (name, None)
        for layer in LAYERS:
            assert mk.parse_revival_key(mk.revival_key(name, layer)) == (name, layer)
            assert mk.parse_key(mk.revival_key(name, layer)) == mk.MetricKey(
                "revival_layer", name, layer=layer
            )
    for name in ("alive_units", "alive_fraction", "effective_params", "effective_param_fraction"):
        assert mk.parse_capacity_key(mk.capacity_key(name)) == name
    assert mk.parse_alert_key(mk.alert_key("dead_mlp")) == "dead_mlp"
    assert mk.parse_plot_key(mk.plot_key("revival_per_layer")) == "revival_per_layer"
    for key in mk.PLAIN_KEYS:
        assert mk.parse_key(key) == mk.MetricKey("plain", key)


@pytest.mark.parametrize(
    "key",
    [
        "liveness/mlp_post/layer_x/dead_ratio",
        "liveness/mlp_post/layer_/dead_ratio",
        "liveness/mlp_post/layer_-1/x",
        "liveness//layer_1/dead_ratio",
        "liveness/mlp_post/layer_1/",
        "liveness/mlp_post/layer_1/a/b",
        "live/mlp_post/layer_1/dead_ratio",
        "liveness/mlp_post/layer_１/dead_ratio",
        "revival/layer_q/x",
        "train/other",
        "capacity/a/b",
        "alerts/",
        "revival/dead_ratio_before/a/b",
        "",
    ],
)
def test_keys_of_other_shapes_do_not_parse(key):
    assert mk.parse_layer_key(key) is None
    assert mk.parse_key(key) is None


@pytest.mark.parametrize(
    "bad",
    [
        ("mlp/post", 1, "x"),
        ("mlp_post", -1, "x"),
        ("mlp_post", True, "x"),
        ("mlp_post", 1, ""),
        ("", 0, "dead_ratio"),
    ],
)
def test_builders_refuse_parts_that_would_not_parse_back(bad):
    with pytest.raises(ValueError):
        mk.layer_key(*bad)


def test_every_key_of_a_tiny_run_parses(tmp_path, corpus_file):
    """A run with revival every 5 steps, an alert rule and eval: every key of metrics.jsonl is a design name,
    and the kinds a run writes are all there."""
    run = tmp_path / "run"
    train(
        load_config(
            None,
            tiny_overrides(
                run,
                corpus_file,
                **{
                    "data.max_tokens": 32 * 8 * 6,
                    "train.epochs": 1,
                    "train.eval_every": 5,
                    "revival.method": "synaptic_stripping",
                    "revival.every_steps": 5,
                    "liveness.dead_frequency": 0.2,
                    "alerts.rules": "[{name: dead_mlp, site: mlp_post, above: 0.0}]",
                },
            ),
        )
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in rows for k in r} - {mk.STEP}
    unparsed = sorted(k for k in keys if mk.parse_key(k) is None)
    assert not unparsed
    kinds = {mk.parse_key(k).kind for k in keys}
    assert kinds >= {
        "plain",
        "liveness_site",
        "liveness_layer",
        "capacity",
        "revival",
        "revival_layer",
        "dead_ratio_before",
        "dead_ratio_after",
        "alert",
    }
    layers = {mk.parse_key(k).layer for k in keys if mk.parse_key(k).kind == "liveness_layer"}
    assert layers == {0, 1}


# Every namespace metric_keys names. The bare `step` and `epoch` are left out: as words they are also the
# fields of status.json, checkpoints and the loop's position, so a literal of them is not a metric name.
NAMESPACES = {k.split("/")[0] for k in mk.PLAIN_KEYS if "/" in k} | {
    mk.LIVENESS,
    mk.CAPACITY,
    mk.REVIVAL,
    mk.ALERTS,
    mk.PLOTS,
    mk.SWEEP,
}


def hand_spelled_keys(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string constant and f-string head in `path` that starts with `<namespace>/`.
    Docstrings and other bare string statements are prose, not keys: they do not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            prose.add(id(node.value))
        if isinstance(node, ast.JoinedStr):
            prose |= {id(part) for part in node.values}  # an f-string counts by its head, below
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text = node.values[0].value
        if text is not None and text.split("/")[0] in NAMESPACES and "/" in text:
            found.append((node.lineno, text))
    return sorted(found)


def test_metric_names_are_spelled_only_in_metric_keys():
    """A metric name is built through reviveformer.metric_keys, never spelled by hand elsewhere (design.md,
    "Metric names"): the package's other modules hold no string starting with one of its namespaces."""
    package = REPO / "reviveformer"
    found = [
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for path in sorted(package.rglob("*.py"))
        if path != package / "metric_keys.py"
        for line, text in hand_spelled_keys(path)
    ]
    assert not found, "metric names spelled by hand (use reviveformer.metric_keys):\n" + "\n".join(found)


def test_the_scan_finds_keys_but_not_prose(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        '"""Logs `revival/count` (a docstring)."""\n'
        "# liveness/mlp_post/dead_ratio in a comment\n"
        'a = {"val/loss": 1}\n'
        'b = f"liveness/{site}/dead_ratio"\n'
        'c = f"{x} revival/{y}"\n'
        'd = "valid/x", "train"\n'
    )
    assert hand_spelled_keys(source) == [(3, "val/loss"), (4, "liveness/")]
