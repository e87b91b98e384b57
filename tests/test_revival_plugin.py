"""Revival methods as plug-ins: a user's own Reviver named `revival.method=module:Class` trains end to end;
each method's config section, its errors (exit 2, naming the key and what is valid), and the old flat keys of
saved runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config, to_dict
from reviveformer.errors import CheckpointError, ConfigError
from reviveformer.resume import compare_settings
from reviveformer.revival import arm_of_method, build_reviver
from reviveformer.trainer import train

RECIPE = REPO / "recipes" / "quickstart.yaml"
TESTS = Path(__file__).parent
PLUGIN = "custom_reviver:BiasKick"


@pytest.fixture
def custom_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tests/custom_reviver.py importable as `custom_reviver`, as a user's own module would be."""
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.mark.slow
def test_a_plugin_trains_end_to_end(tmp_path, corpus_file, custom_path) -> None:
    """BiasKick sets the bias of every dead unit to its option's value at each epoch end: after the last one the
    final model holds exactly that value at exactly the units the last liveness file calls dead, and its metrics
    count the units of both epoch-end files (its running total went through the trainer's state)."""
    run_dir = tmp_path / "kick"
    overrides = {
        "data.max_tokens": 32 * 8 * 6,
        "train.epochs": 2,
        "model.activation": "relu",
        "liveness.dead_frequency": 0.2,
        "revival.method": PLUGIN,
        "revival.bias_kick.value": 0.75,
    }
    train(load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **overrides)))
    dead = [
        {e["layer"]: e["dead_units"] for e in json.loads(f.read_text())["sites"]["mlp_post"]}
        for f in sorted((run_dir / "liveness").glob("epoch_*.json"))
    ]
    assert len(dead) == 2 and sum(map(len, dead[-1].values())) > 0, "there should be dead ReLU units to kick"
    weights = load_file(run_dir / "final" / "model.safetensors")
    for i, units in dead[-1].items():
        bias = weights[f"transformer.h.{i}.mlp.c_fc.bias"]
        kicked = torch.zeros_like(bias, dtype=torch.bool)
        kicked[units] = True
        assert (bias[kicked] == 0.75).all() and (bias[~kicked] != 0.75).all()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in rows if "revival/count" in r]
    assert [e["revival/count"] for e in events] == [1.0, 2.0]
    assert events[-1]["revival/kicked_units"] == sum(map(len, dead[-1].values()))
    assert events[-1]["revival/kicked_total"] == sum(len(u) for d in dead for u in d.values())
    for i, units in dead[-1].items():
        assert events[-1][f"revival/layer_{i}/kicked_units"] == len(units)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["revival"]
    assert saved["method"] == PLUGIN and saved["bias_kick"] == {"value": 0.75}
    assert arm_of_method(PLUGIN) == "kick"  # its runs' job_type and compare label


def test_plugin_section_is_validated_at_load(custom_path) -> None:
    cfg = load_config(None, [f"revival.method={PLUGIN}", "revival.bias_kick.value=2.5"])
    assert build_reviver(cfg.revival).value == 2.5
    with pytest.raises(ConfigError, match=r"revival.bias_kick.value=-1.0 must be > 0"):
        load_config(None, [f"revival.method={PLUGIN}", "revival.bias_kick.value=-1"])
    with pytest.raises(
        ConfigError, match=r"unknown config key 'revival.bias_kick.valu'; did you mean 'value'"
    ):
        load_config(None, [f"revival.method={PLUGIN}", "revival.bias_kick.valu=1"])
    # a section of a method that is not named: unknown, with the valid keys
    with pytest.raises(
        ConfigError,
        match=r"revival.bias_kick.*method, every_steps, every, synaptic_stripping, redo, grama, continual_backprop",
    ):
        load_config(None, ["revival.method=redo", "revival.bias_kick.value=1"])


@pytest.mark.parametrize(
    ("method", "fragment"),
    [
        ("no_such_module:Thing", "cannot import module 'no_such_module'"),
        ("custom_reviver:Missing", "module 'custom_reviver' has no attribute 'Missing'"),
        ("custom_reviver:NotAReviver", "'NotAReviver' is not a subclass of reviveformer.revival.Reviver"),
        (
            "prune",
            "must be one of none, synaptic_stripping, redo, grama, continual_backprop, shrink_perturb, l2_init, "
            "fresh_start, or your own Reviver as package.module:Class",
        ),
    ],
)
def test_a_bad_method_is_exit_2(method, fragment, tmp_path, corpus_file, custom_path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", str(RECIPE), *tiny_overrides(run_dir, corpus_file), f"revival.method={method}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"revival.method={method!r}" in err and fragment in err and "Traceback" not in err
    assert not run_dir.exists()


def test_a_plugin_that_raises_is_exit_2_and_the_checkpoints_stand(
    tmp_path, corpus_file, custom_path, capsys, monkeypatch
) -> None:
    """Issue 18 item 6: a plug-in whose revive raises (at step 3, after the checkpoint of step 2) stops the run
    with exit 2 naming the method and the exception, no traceback; the checkpoint stays complete, and once
    the plug-in is fixed the run resumes from it and finishes."""
    import custom_reviver

    from reviveformer.checkpoint import damage, step_dir_name

    monkeypatch.setattr(custom_reviver.Flaky, "failing", True)
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        run_dir,
        corpus_file,
        **{
            "data.max_tokens": 32 * 8 * 6,
            "model.activation": "relu",
            "revival.method": "custom_reviver:Flaky",
            "revival.every_steps": 3,
            "train.checkpoint_every": 2,
            "train.epochs": 1,
        },
    )
    code = main(["train", str(RECIPE), *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "revival.method=custom_reviver:Flaky: its revive() raised KeyError: 'no bias here'" in err, err
    assert "at step 3" in err and "Traceback" not in err and err.count("error:") == 1
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved == [step_dir_name(2)], saved
    assert damage(run_dir / "checkpoints" / step_dir_name(2)) is None  # whole and loadable
    assert not (run_dir / "final").exists()

    monkeypatch.setattr(custom_reviver.Flaky, "failing", False)
    assert main(["train", str(RECIPE), *overrides, "train.resume=auto"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "revival/count" in r] == [3, 6]
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_a_built_in_method_that_raises_keeps_its_traceback(tmp_path, custom_path, monkeypatch) -> None:
    """Only a plug-in's exception becomes a UserError: a built-in method's is a bug of ours, raised as is."""
    import custom_reviver

    from reviveformer.errors import UserError
    from reviveformer.loop.revival_pass import RevivalPass
    from reviveformer.revival import ReDo

    def broken(self, model, report, optimizer):
        raise IndexError("ours")

    monkeypatch.setattr(ReDo, "revive", broken)
    monkeypatch.setattr(custom_reviver.Flaky, "failing", True)
    report = type("Report", (), {"tokens": 1})()
    for reviver, method, raised in (
        (ReDo(), "redo", IndexError),
        (custom_reviver.Flaky(), "custom_reviver:Flaky", UserError),
    ):
        revival = RevivalPass(reviver, method, ["mlp_post"], None, None, None, None, tmp_path, True)
        with pytest.raises(raised) as e:
            revival(5, "during epoch 1", report)
        assert type(e.value) is raised


def test_method_sections_replace_the_flat_keys() -> None:
    cfg = load_config(
        None,
        [
            "revival.method=synaptic_stripping",
            "revival.synaptic_stripping.fraction=0.2",
            "revival.redo.tau=0.3",
        ],
    )
    assert to_dict(cfg)["revival"] == {
        "method": "synaptic_stripping",
        "every_steps": 0,
        "every": "epoch",
        "synaptic_stripping": {"fraction": 0.2, "persistent": True, "strip_bias": False},
        "redo": {"tau": 0.3},
        "grama": {"tau": 0.1},
        "continual_backprop": {"replacement_rate": 0.0001, "decay_rate": 0.99, "maturity_threshold": 100},
        "shrink_perturb": {"shrink": 0.4, "perturb": 0.1},
        "l2_init": {"strength": 0.001},
    }
    with pytest.raises(ConfigError, match=r"revival.synaptic_stripping.fraction=1.5 must be in \(0, 1\]"):
        load_config(None, ["revival.synaptic_stripping.fraction=1.5"])
    with pytest.raises(ConfigError, match=r"revival.grama.tau=-0.1 must be >= 0"):
        load_config(None, ["revival.grama.tau=-0.1"])
    with pytest.raises(
        ConfigError, match=r"unknown config key 'revival.stripping'; did you mean 'synaptic_stripping'"
    ):
        load_config(None, ["revival.stripping.fraction=0.1"])


def test_old_flat_keys_are_read_in_their_section_with_a_warning(tmp_path, caplog) -> None:
    """A config.yaml saved before the sections (flat fraction, persistent, strip_bias, tau) loads as it meant;
    tau was shared by ReDo and GraMa, so it sets both."""
    old = tmp_path / "config.yaml"
    old.write_text(
        yaml.safe_dump(
            {
                "revival": {
                    "method": "redo",
                    "fraction": 0.3,
                    "persistent": False,
                    "strip_bias": True,
                    "every_steps": 0,
                    "tau": 0.25,
                }
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        cfg = load_config(old)
    assert to_dict(cfg)["revival"] == {
        "method": "redo",
        "every_steps": 0,
        "every": "epoch",
        "synaptic_stripping": {"fraction": 0.3, "persistent": False, "strip_bias": True},
        "redo": {"tau": 0.25},
        "grama": {"tau": 0.25},
        "continual_backprop": {"replacement_rate": 0.0001, "decay_rate": 0.99, "maturity_threshold": 100},
        "shrink_perturb": {"shrink": 0.4, "perturb": 0.1},
        "l2_init": {"strength": 0.001},
    }
    assert "revival.fraction as revival.synaptic_stripping.fraction" in caplog.text
    assert "revival.tau as revival.redo.tau and revival.grama.tau" in caplog.text
    # an override in the old form works too; both forms at once with different values is an error
    assert load_config(None, ["revival.fraction=0.4"]).revival.synaptic_stripping.fraction == 0.4
    with pytest.raises(ConfigError, match=r"revival.tau .* and revival.redo.tau disagree"):
        load_config({"revival": {"tau": 0.2, "redo": {"tau": 0.3}}})


def test_resume_compares_an_old_checkpoint_config_in_the_new_places() -> None:
    """A checkpoint's saved config with the flat keys: the same values are no change; a changed persistent is
    refused under its new name; a changed tau is allowed (with a warning line)."""
    new = to_dict(load_config(None, ["revival.method=synaptic_stripping"]))
    old = to_dict(load_config(None, ["revival.method=synaptic_stripping"]))
    old["revival"] = {
        "method": "synaptic_stripping",
        "fraction": 0.05,
        "persistent": True,
        "strip_bias": False,
        "every_steps": 0,
        "tau": 0.1,
    }
    assert compare_settings(old, new, "ckpt") == []
    old["revival"]["tau"] = 0.2
    assert compare_settings(old, new, "ckpt") == [
        "revival.grama.tau: 0.2 -> 0.1",
        "revival.redo.tau: 0.2 -> 0.1",
    ]
    old["revival"]["persistent"] = False
    with pytest.raises(CheckpointError, match=r"revival.synaptic_stripping.persistent: False -> True"):
        compare_settings(old, new, "ckpt")
