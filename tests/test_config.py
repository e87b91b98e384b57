"""Config: every recipe loads, overrides apply, bad values give a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reviveformer.config import Config, load_config, save_config
from reviveformer.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    assert cfg.data.block_size <= cfg.model.n_positions


def test_overrides_win_over_recipe_and_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 0.01\n  batch_size: 4\nmodel:\n  activation: relu\n")
    cfg = load_config(recipe, ["train.lr=3e-4", "revival.method=synaptic_stripping", "alerts.rules=[{name: d, above: 0.5}]"])
    assert cfg.train.lr == 3e-4
    assert cfg.train.batch_size == 4  # from the recipe
    assert cfg.train.epochs == 1  # default
    assert cfg.model.activation == "relu"
    assert cfg.revival.method == "synaptic_stripping"
    assert cfg.alerts.rules[0].name == "d" and cfg.alerts.rules[0].above == 0.5
    assert cfg.alerts.rules[0].site == "mlp_post"  # rule defaults fill in


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=5e-4", "liveness.sites=[mlp_post]", "wandb.tags=[a,b]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "did you mean 'lr'"),
        ("modell.n_layer=2", "did you mean 'model'"),
        ("train.lr=abc", "train.lr"),
        ("train.lr=-1", "train.lr=-1.0 must be a positive number"),
        ("revival.fraction=0", "revival.fraction=0.0 must be in (0, 1]"),
        ("revival.fraction=1.5", "revival.fraction=1.5 must be in (0, 1]"),
        ("liveness.threshold=-0.1", "liveness.threshold=-0.1 must be >= 0"),
        ("liveness.criterion=max", "criterion='max' must be one of abs, positive"),
        ("liveness.sites=[mlp_mid]", "must be a non-empty subset of mlp_pre, mlp_post, attn_out"),
        ("data.block_size=256", "data.block_size=256 is above model.n_positions=128"),
        ("model.n_head=3", "n_head=3 must be >= 1 and divide n_embd=64"),
        ("revival.method=prune", "revival.method='prune' must be one of none, synaptic_stripping, redo"),
        ("alerts.rules=[{name: x, metric: loss}]", "metric='loss' must be one of dead_ratio, dormant_ratio"),
        ("train.mixed_precision=fp8", "mixed_precision='fp8' must be one of no, fp16, bf16"),
        ("trainlr", "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_several_problems_in_one_message():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=-1", "train.batch_size=0"])
    assert "train.lr" in str(e.value) and "train.batch_size" in str(e.value)


def test_bad_yaml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
