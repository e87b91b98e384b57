"""reviveformer.metric_keys: the design's metric names, built and parsed in one place."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_overrides
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
