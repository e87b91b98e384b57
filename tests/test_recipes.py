"""Every recipe runs, with its sizes overridden to tiny, on the embedded corpus; the Accelerate launch
configs load with Accelerate's own reader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from reviveformer.config import load_config
from reviveformer.trainer import train

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
LAUNCH_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
# what a real-hardware recipe needs that this machine lacks (hub data, GPU precision, compile time)
LOCAL = {
    "data.source": "stdlib",
    "data.max_files": 3,
    "data.tokenizer": "bpe",
    "data.max_tokens": 32 * 8 * 6,
    "train.mixed_precision": "no",
    "train.compile": False,
    "train.epochs": 1,
    "train.max_steps": 6,
    "train.checkpoint_every": 0,
    "train.eval_batches": 2,
}


@pytest.fixture(scope="module")
def quickstart_final(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("qs") / "baseline"
    train(load_config(REPO / "recipes" / "quickstart.yaml", tiny_overrides(run_dir, **LOCAL)))
    return run_dir / "final"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_at_tiny_size(recipe, tmp_path, quickstart_final):
    extra = dict(LOCAL)
    cfg = load_config(recipe)
    if cfg.model.init_from:
        extra["model.init_from"] = str(quickstart_final)
    run_dir = tmp_path / recipe.stem
    summary = train(load_config(recipe, tiny_overrides(run_dir, **extra)))
    # 6 batches of 8 sequences; gradient accumulation (gpt2-124m accumulates 8) makes fewer steps
    assert summary.steps == math.ceil(6 / cfg.train.grad_accum)
    saved = load_config(run_dir / "config.yaml")
    assert saved.revival.method == cfg.revival.method  # the recipe's own arm survived the size overrides
    assert saved.model.activation == (cfg.model.activation or ("relu" if cfg.model.init_from else "gelu_new"))
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_arms_differ_only_in_their_arm(tmp_path):
    """An arm recipe (base: ...) is its base plus the revival method and output dir."""
    from reviveformer.config import to_dict

    pairs = [
        ("quickstart", "quickstart-stripping"),
        ("pilot-wikitext2", "pilot-wikitext2-redo"),
        ("dying-relu", "dying-relu-stripping"),
        ("dying-relu", "dying-relu-redo"),
        ("dying-relu", "dying-relu-grama"),
        ("continual-permuted", "continual-permuted-redo"),
    ]
    for base, arm in pairs:
        a = to_dict(load_config(REPO / "recipes" / f"{base}.yaml"))
        b = to_dict(load_config(REPO / "recipes" / f"{arm}.yaml"))
        diff = {(s, k) for s in a for k in a[s] if a[s][k] != b[s][k]}
        # a continual arm revives at its task boundaries
        arm_keys = {("revival", "every")} if a["tasks"]["kind"] != "none" else set()
        assert diff == {("revival", "method"), ("train", "output_dir"), *arm_keys}, diff


def test_base_cycle_is_an_error(tmp_path):
    from reviveformer.errors import ConfigError

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_a_missing_base_names_the_recipe_that_points_to_it(tmp_path, capsys):
    """Issue 18 item 4: of two arms sharing a folder, the message names the arm whose base: is missing, and
    the missing file as it resolved, through the real command line (exit 2, no traceback)."""
    from reviveformer.cli import main

    arms = tmp_path / "arms"
    arms.mkdir()
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n")
    (arms / "good.yaml").write_text("base: ../base.yaml\n")
    (arms / "bad.yaml").write_text("base: ../bsae.yaml\nrevival:\n  method: redo\n")
    load_config(arms / "good.yaml")  # the same base, spelled right, loads
    code = main(["train", str(arms / "bad.yaml"), f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"recipe {arms / 'bad.yaml'}" in err and "base: ../bsae.yaml" in err, err
    assert str(tmp_path / "bsae.yaml") in err and "does not exist" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=[p.stem for p in LAUNCH_CONFIGS])
def test_accelerate_launch_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.mixed_precision == "bf16"
    assert cfg.num_processes >= 1


def test_a_builtin_recipe_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    """Issue 29: `reviveformer train quickstart` needs no checkout: a bare name that is no file is the built-in
    recipe (its base: too); a file of that name where the user is wins."""
    monkeypatch.chdir(tmp_path)
    for name in ("quickstart", "quickstart.yaml"):
        assert load_config(name) == load_config(REPO / "recipes" / "quickstart.yaml")
    arm = load_config("quickstart-stripping")
    assert arm.revival.method == "synaptic_stripping" and arm.model.n_layer == 4
    (tmp_path / "quickstart.yaml").write_text("train:\n  lr: 0.123\n")
    assert load_config("quickstart.yaml").train.lr == 0.123


def test_a_base_may_name_a_builtin_recipe(tmp_path):
    """A user's own recipe starts from a built-in one by name; a base file beside the recipe comes first."""
    (tmp_path / "mine.yaml").write_text("base: dying-relu\ntrain:\n  lr: 0.001\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 1.0 and cfg.model.activation == "relu"
    (tmp_path / "dying-relu.yaml").write_text("train:\n  weight_decay: 0.5\n")
    (tmp_path / "mine.yaml").write_text("base: dying-relu.yaml\n")
    assert load_config(tmp_path / "mine.yaml").train.weight_decay == 0.5


def test_an_unknown_recipe_name_lists_the_builtin_ones(tmp_path, monkeypatch, capsys):
    from reviveformer.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "quickstrat"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "recipe quickstrat does not exist" in err and "quickstart, quickstart-stripping" in err, err
    assert "reviveformer recipes" in err and "Traceback" not in err and not (tmp_path / "runs").exists()


def test_recipes_lists_each_builtin_recipe_with_its_purpose(capsys):
    """`reviveformer recipes`: every built-in recipe and launch config, with its first line (a comment) as its
    purpose: one line that says what it is for."""
    from reviveformer.cli import main

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path in [*RECIPES, *LAUNCH_CONFIGS]:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and 20 < len(first) <= 120, f"{path}: {first!r}"
        shown = path.stem if path in RECIPES else path.name
        assert any(line.split() == [shown, *first[2:].split()] for line in lines), (path, lines)


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """`reviveformer recipes | head -1` once ended with a BrokenPipeError traceback. Made deterministic: the
    command's stdout is a pipe whose reader is already closed, so its first write fails."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "reviveformer", "recipes"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write)
    assert p.returncode == 141 and "Traceback" not in p.stderr, p.stderr
