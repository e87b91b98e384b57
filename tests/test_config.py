"""Config: every recipe loads, overrides apply, bad values give a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reviveformer.config import Config, load_config, save_config
from reviveformer.errors import ConfigError
from reviveformer.run_checks import check_run_inputs

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
    cfg = load_config(
        recipe, ["train.lr=3e-4", "revival.method=synaptic_stripping", "alerts.rules=[{name: d, above: 0.5}]"]
    )
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
        (
            "revival.synaptic_stripping.fraction=0",
            "revival.synaptic_stripping.fraction=0.0 must be in (0, 1]",
        ),
        (
            "revival.synaptic_stripping.fraction=1.5",
            "revival.synaptic_stripping.fraction=1.5 must be in (0, 1]",
        ),
        ("liveness.threshold=-0.1", "liveness.threshold=-0.1 must be >= 0"),
        ("liveness.criterion=max", "criterion='max' must be one of abs, positive"),
        ("liveness.sites=[mlp_mid]", "must be a non-empty subset of mlp_pre, mlp_post, attn_out"),
        ("data.block_size=256", "data.block_size=256 is above model.n_positions=128"),
        ("model.n_head=3", "n_head=3 must be >= 1 and divide n_embd=64"),
        ("model.initializer_range=0", "model.initializer_range=0.0 must be a positive number"),
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


# --- checks across sections (issue 10 item 5): before the run, all problems in one message ------------------


def test_cross_section_problems_are_gathered_and_name_both_keys():
    cfg = load_config(
        None,
        [
            "revival.method=redo",
            "liveness.sites=[attn_out]",
            "liveness.sample_every=20",
            "alerts.rules=[{name: d, site: mlp_pre, action: stop, layers: [3]}]",
        ],
    )
    with pytest.raises(ConfigError) as e:
        check_run_inputs(cfg)
    msg = str(e.value)
    for fragment in (
        "revival.method=redo needs 'mlp_post' in liveness.sites=['attn_out']",
        "alerts.rules[d].site=mlp_pre is not watched",
        "alerts.rules[d].layers has [3]",
        "model.n_layer=2 has layers 0..1",
        "liveness.sample_every=20 is above train.log_every=10",
    ):
        assert fragment in msg, fragment


def test_measuring_a_saved_model_skips_the_training_checks():
    """audit and strip load without them (they are the run's, not load_config's): a liveness.sites override
    on a checkpoint trained with revival is a measurement choice there, not a broken run."""
    cfg = load_config(None, ["revival.method=redo", "liveness.sites=[attn_out]"])
    assert cfg.liveness.sites == ["attn_out"]
    with pytest.raises(ConfigError, match="needs 'mlp_post' in liveness.sites"):
        check_run_inputs(cfg)  # what a training run of that config is refused for


@pytest.mark.parametrize(
    "overrides",
    [
        ["liveness.sample_every=10", "train.log_every=10"],  # equal: each logged step is itself counted
        [
            "liveness.sample_every=3",
            "train.log_every=4",
        ],  # not a divisor: 4 consecutive steps hold a multiple of 3
        ["liveness.enabled=false", "liveness.sample_every=50"],  # nothing is counted, nothing to leave empty
        ["alerts.rules=[{name: d, action: revive, layers: [1]}]", "revival.method=synaptic_stripping"],
    ],
)
def test_consistent_sections_load(overrides):
    check_run_inputs(load_config(None, overrides))


def test_layer_check_reads_the_checkpoint_with_init_from(tmp_path):
    """With init_from the model's layers are the checkpoint's, not model.n_layer's default."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(n_layer=4, n_embd=16, n_head=2, n_positions=16, vocab_size=300)
    ).save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")  # only its presence is checked before the run
    check_run_inputs(
        load_config(None, [f"model.init_from={tmp_path}", "alerts.rules=[{name: d, layers: [3]}]"])
    )
    cfg = load_config(None, [f"model.init_from={tmp_path}", "alerts.rules=[{name: d, layers: [4]}]"])
    with pytest.raises(ConfigError, match=r"layers has \[4\].*model.init_from=.* has layers 0..3"):
        check_run_inputs(cfg)


def test_a_window_of_log_every_steps_always_holds_a_counted_step():
    """Why sample_every <= log_every suffices: steps s with s % sample_every == 0 are counted and a window
    is the log_every steps since the last log (an epoch-end measurement counts in a window of its own and
    does not cut the training window). Checked by brute force against the rule the run applies (the run's
    cross-section checks; each value alone is valid, so the defaults are loaded once and the two set on them)."""
    cfg = load_config(None, [])
    for log_every in range(1, 25):
        for sample_every in range(1, 30):
            windows = [range(k * log_every + 1, (k + 1) * log_every + 1) for k in range(40)]
            all_counted = all(any(s % sample_every == 0 for s in w) for w in windows)
            cfg.liveness.sample_every, cfg.train.log_every = sample_every, log_every
            ok = True
            try:
                check_run_inputs(cfg)
            except ConfigError:
                ok = False
            assert ok == all_counted, (sample_every, log_every)


@pytest.mark.slow
def test_sampled_windows_are_never_empty_across_an_epoch_end(tmp_path, corpus_file):
    """End to end: 6 steps per epoch, logs every 5 steps, one step in 5 counted; the window (5, 10] spans an
    epoch end and every logged liveness window has tokens (an empty one reads as dead_ratio 1.0)."""
    import json

    from conftest import REPO, tiny_overrides
    from reviveformer.trainer import train

    run_dir = tmp_path / "run"
    train(
        load_config(
            REPO / "recipes" / "quickstart.yaml",
            tiny_overrides(
                run_dir,
                corpus_file,
                **{"data.max_tokens": 32 * 8 * 6, "train.epochs": 2, "liveness.sample_every": 5},
            ),
        )
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "liveness/mlp_pre/dead_ratio" in r and "train/loss" not in r]
    steps = sorted({r["step"] for r in rows if "train/loss" in r})
    assert steps == [5, 10]
    window_logs = [r for r in logged if r["step"] in steps]
    assert len(window_logs) >= 2
    assert all(r["liveness/mlp_pre/dead_ratio"] < 1.0 for r in window_logs)


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "alerts.rules={dead: {above: 0.3}}",
            "'alerts.rules' must be a list (each entry a mapping of name, site",
        ),
        ("alerts.rules=[5]", "'alerts.rules[0]' must be a mapping of its keys (name, site, metric"),
        (
            "alerts.rules=[{name: a, layers: {x: 1}}]",
            "'alerts.rules[0].layers' must be a list (each entry int)",
        ),
        ("liveness.sites={a: 1}", "'liveness.sites' must be a list (each entry str)"),
        ("wandb.tags={a: 1}", "'wandb.tags' must be a list"),
        ("alerts=[1]", "'alerts' must be a mapping of its keys (rules, wandb_wait_s), not [1]"),
        ("model=5", "'model' must be a mapping of its keys (n_layer, n_embd"),
        (
            "alerts.rules=[{name: a, sitee: x}]",
            "valid keys at 'alerts.rules[0]': name, site, metric, above, layers",
        ),
        ("train.lr={a", "the value is not valid YAML"),
    ],
)
def test_shape_errors_name_the_place_and_what_is_valid_there(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)
    assert "valid keys: model, data" not in str(e.value)  # not the top-level sections for a nested key


def test_shapes_are_checked_in_a_base_recipe_too(tmp_path):
    (tmp_path / "base.yaml").write_text("alerts:\n  rules:\n    dead: {above: 0.3}\n")
    (tmp_path / "arm.yaml").write_text("base: base.yaml\nrevival:\n  method: redo\n")
    with pytest.raises(ConfigError, match=r"base.yaml: 'alerts.rules' must be a list"):
        load_config(tmp_path / "arm.yaml")


@pytest.mark.parametrize("std", [0.02, 0.5])
def test_initializer_range_sets_the_init_scale(std):
    """model.initializer_range is the std of a new model's weights; GPT-2 scales its residual projections
    (c_proj) by 1/sqrt(2 * n_layer)."""
    import math

    from reviveformer.config import ModelConfig
    from reviveformer.model import build_model

    model = build_model(
        ModelConfig(n_layer=2, n_embd=64, n_head=2, activation="relu", initializer_range=std),
        vocab_size=300,
        eos_token_id=0,
    )
    mlp = model.transformer.h[0].mlp
    assert mlp.c_fc.weight.std().item() == pytest.approx(std, rel=0.03)  # 16,384 draws: sd error ~0.6%
    assert mlp.c_proj.weight.std().item() == pytest.approx(std / math.sqrt(2 * 2), rel=0.03)
    assert model.config.initializer_range == std


def _float_keys(schema: type, at: str = "") -> list[tuple[str, bool]]:
    """(dotted key, whether +inf is allowed) of every float field under `schema`, read from the dataclasses
    themselves: the revival section with every built-in method's and a plug-in's own section, alert rules
    under `alerts.rules[r]`."""
    import typing
    from dataclasses import fields, is_dataclass

    from reviveformer.config import ALLOW_INF, RevivalConfig, revival_config_class
    from reviveformer.config.checks import list_hint
    from reviveformer.revival import reviver_class

    hints = typing.get_type_hints(schema)
    keys = []
    for f in fields(schema):
        hint, key = hints[f.name], f"{at}.{f.name}" if at else f.name
        if hint is RevivalConfig:
            hint = revival_config_class(reviver_class("custom_reviver:BiasKick"))
        listed = list_hint(hint)
        if is_dataclass(hint):
            keys += _float_keys(hint, key)
        elif listed is not None and is_dataclass(listed[0]):
            keys += _float_keys(listed[0], f"{key}[r]")
        elif hint is float or float in typing.get_args(hint):
            keys.append((key, bool(f.metadata.get(ALLOW_INF))))
    return keys


def _override(key: str, value: str) -> str:
    if key.startswith("alerts.rules[r]."):
        return f"alerts.rules=[{{name: r, {key.rpartition('.')[2]}: {value}}}]"
    return f"{key}={value}"


def test_every_float_key_refuses_nan_and_inf(monkeypatch):
    """Issue 18 item 3: nan, inf and -inf in any float field of any section (a plug-in method's too) are a
    ConfigError naming the key and the value; the list of fields is computed here from the dataclasses, so a
    new float field is covered. +inf stays valid only where a field says it means something."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    keys = _float_keys(Config)
    names = {k for k, _ in keys}
    assert {"train.weight_decay", "train.adam_eps", "liveness.tau", "revival.redo.tau"} <= names
    assert {"revival.bias_kick.value", "alerts.rules[r].above"} <= names
    for key, inf_ok in keys:
        for value in ("nan", "inf", "-inf"):
            overrides = ["revival.method=custom_reviver:BiasKick", _override(key, value)]
            if value == "inf" and inf_ok:
                cfg = load_config(overrides=overrides)
                leaf = cfg
                for part in key.split("."):
                    leaf = getattr(leaf, part)
                assert leaf == float("inf"), key
                continue
            with pytest.raises(ConfigError) as err:
                load_config(overrides=overrides)
            assert f"{key}={float(value)}" in str(err.value), (key, value, err.value)


# --- the revival section's shared keys (issue 26): a method's section may not take their names -----------------


def test_shared_revival_keys_are_the_revival_sections_own_fields():
    """SHARED_KEYS is read from RevivalConfig: a shared key added to the dataclass (as `every` was) cannot be
    left out of it, where a method of that name would shadow the field."""
    from dataclasses import fields

    from reviveformer.config import RevivalConfig
    from reviveformer.revival import SHARED_KEYS

    assert set(SHARED_KEYS) == {f.name for f in fields(RevivalConfig)}
    assert "every" in SHARED_KEYS


@pytest.mark.parametrize("shared", ["method", "every_steps", "every"])
def test_a_plugin_named_like_a_shared_key_is_refused(shared, monkeypatch):
    """A user's Reviver whose name is a shared key would make its section revival.<name> shadow that key."""
    import sys
    import types

    from reviveformer.revival import Reviver

    class Shadow(Reviver):
        name = shared
        arm = "shadow"

        @classmethod
        def from_config(cls, options, *, seed=0):
            return cls()

        def revive(self, model, report, optimizer):
            return {}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    module = types.ModuleType("shadow_reviver")
    module.Shadow = Shadow
    monkeypatch.setitem(sys.modules, "shadow_reviver", module)
    with pytest.raises(ConfigError, match=f"its name '{shared}' names its config section revival.{shared}"):
        load_config(None, ["revival.method=shadow_reviver:Shadow"])
