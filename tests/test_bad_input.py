"""Bad input through the real command line: exit status 2, one message naming the key or file and what is
valid, no traceback, and no run directory left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from reviveformer.cli import main

RECIPE = str(REPO / "recipes" / "quickstart.yaml")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Files the bad inputs point at: an empty text file, a non-GPT-2 model folder, bad recipes, and a small
    GPT-2 checkpoint (no tokenizer) whose vocabulary (300) is smaller than a 512-token tokenizer's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("bad")
    (root / "empty.txt").write_text("\n \n")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (root / "bad.yaml").write_text("train:\n  lr: [1, 2\n")
    (root / "rules_mapping.yaml").write_text(
        "alerts:\n  rules:\n    dead_mlp: {site: mlp_post, above: 0.3}\n"
    )
    (root / "model_5.yaml").write_text("model: 5\n")
    small = root / "small-gpt2"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=300, n_layer=1, n_embd=16, n_head=2, n_positions=32)
    ).save_pretrained(small)
    return root


# (name, arguments after `train`, fragments the one message must hold, whether it fails before any data is
# prepared: those runs get a fresh data.cache_dir that must still not exist afterwards)
def _cases(root: Path, corpus: Path):
    tok512 = root / "tok512"
    recipe_cases = [
        (
            "alerts.rules as a mapping",
            [str(root / "rules_mapping.yaml")],
            ["'alerts.rules' must be a list", "name, site, metric, above, layers, action"],
            True,
        ),
        (
            "model: 5 in a recipe",
            [str(root / "model_5.yaml")],
            ["'model' must be a mapping", "n_layer, n_embd", "not 5"],
            True,
        ),
    ]
    cases = [
        ("unknown key", ["train.lrr=1"], ["did you mean 'lr'"], True),
        ("unknown section", ["trian.lr=1"], ["did you mean 'train'"], True),
        ("wrong type", ["train.batch_size=many"], ["train.batch_size"], True),
        ("negative lr", ["train.lr=-0.1"], ["train.lr=-0.1 must be a positive number"], True),
        ("adam beta of 1", ["train.adam_beta2=1.0"], ["train.adam_beta2=1.0 must be in [0, 1)"], True),
        (
            "fraction above 1",
            ["revival.synaptic_stripping.fraction=1.5"],
            ["revival.synaptic_stripping.fraction=1.5 must be in (0, 1]"],
            True,
        ),
        ("fraction zero", ["revival.fraction=0"], ["must be in (0, 1]"], True),
        # issue 18 item 3: inf passed the range checks (one halted naming a checkpoint that did not exist)
        ("weight decay inf", ["train.weight_decay=inf"], ["train.weight_decay=inf must be a finite"], True),
        ("adam eps inf", ["train.adam_eps=inf"], ["train.adam_eps=inf must be a finite number"], True),
        ("tau nan", ["revival.redo.tau=nan"], ["revival.redo.tau=nan must be a finite number"], True),
        ("negative threshold", ["liveness.threshold=-1"], ["liveness.threshold=-1.0 must be >= 0"], True),
        ("unknown activation", ["model.activation=relux"], ["relu, leaky_relu"], True),
        ("bad module:attr", ["model.activation=no_such_pkg.mod:act"], ["no_such_pkg"], True),
        (
            "missing data path",
            ["data.source=text", f"data.path={root / 'missing.txt'}"],
            ["missing.txt does not exist"],
            True,
        ),
        ("empty dataset", ["data.source=text", f"data.path={root / 'empty.txt'}"], ["too little text"], True),
        (
            "block size over positions",
            ["data.block_size=64", "model.n_positions=32"],
            ["data.block_size=64 is above model.n_positions=32"],
            True,
        ),
        ("init_from not GPT-2", [f"model.init_from={root / 'bert'}"], ["is a 'bert' model"], True),
        ("init_from without config", [f"model.init_from={root}"], ["has no config.json"], True),
        (
            "init_from missing",
            [f"model.init_from={root / 'gone'}"],
            [f"model.init_from={root / 'gone'} does not exist", "RUN_DIR/final"],
            True,
        ),
        (
            "vocabulary mismatch",
            [
                f"model.init_from={root / 'small-gpt2'}",
                f"data.tokenizer={tok512}",
                "data.source=text",
                f"data.path={corpus}",
            ],
            ["vocabulary mismatch"],
            False,
        ),
        (
            "unknown tokenizer",
            ["data.tokenizer=/no/such/tokenizer"],
            ["data.tokenizer=/no/such/tokenizer"],
            True,
        ),
        # issue 9 item 12: shapes and values that ended in a traceback or did nothing
        (
            "override YAML does not parse",
            ["train.lr=[1,2"],
            ["override 'train.lr=[1,2'", "not valid YAML", "quote it"],
            True,
        ),
        (
            "alerts.rules override as a mapping",
            ["alerts.rules={dead: {above: 0.3}}"],
            ["'alerts.rules' must be a list"],
            True,
        ),
        (
            "rule layers that do not exist",
            ["alerts.rules=[{name: d, layers: [0, 7]}]"],
            ["alerts.rules[d].layers has [7]", "model.n_layer=2 has layers 0..1"],
            True,
        ),
        (
            "rule layers negative",
            ["alerts.rules=[{name: d, layers: [-1]}]"],
            ["alerts.rules[d].layers=[-1]", "layer indices >= 0"],
            True,
        ),
        (
            "rule on an unwatched site",
            ["liveness.sites=[mlp_post]", "alerts.rules=[{name: d, site: attn_out}]"],
            ["alerts.rules[d].site=attn_out is not watched", "liveness.sites=['mlp_post']"],
            True,
        ),
        (
            "revive action without a method",
            ["alerts.rules=[{name: d, action: revive}]"],
            ["alerts.rules[d].action=revive", "revival.method=none", "synaptic_stripping or redo"],
            True,
        ),
        (
            "split leaves no training documents",
            ["data.val_fraction=0.999"],
            ["data.val_fraction=0.999 leaves no training documents", "at most 0.9"],
            True,
        ),
        (
            "split leaves the training set below one batch",
            ["data.val_fraction=0.97", "train.batch_size=64"],
            ["train.batch_size=64 is larger than the"],
            False,
        ),
        (
            "model too large for memory",
            ["model.n_layer=4000", "model.n_embd=16384", "model.n_head=2"],
            ["too large for this machine", "model.n_layer=4000", "model.n_embd=16384", "GiB"],
            True,
        ),
        # issue 9 item 14: messages name what is valid at that place
        (
            "unknown key inside a rule",
            ["alerts.rules=[{name: d, sitee: mlp_post}]"],
            ["'alerts.rules[0].sitee'", "did you mean 'site'", "name, site, metric, above, layers, action"],
            True,
        ),
        # issue 10 item 5: checks across sections, both keys named
        (
            "revival without liveness",
            ["revival.method=synaptic_stripping", "liveness.enabled=false"],
            ["revival.method=synaptic_stripping needs liveness.enabled=true"],
            True,
        ),
        (
            "revival without mlp_post",
            ["revival.method=redo", "liveness.sites=[attn_out]"],
            ["revival.method=redo needs 'mlp_post' in liveness.sites=['attn_out']"],
            True,
        ),
        (
            "alert without liveness",
            ["liveness.enabled=false", "alerts.rules=[{name: d}]"],
            ["alerts.rules[d] needs liveness.enabled=true"],
            True,
        ),
        (
            "sample_every leaves a window empty",
            ["liveness.sample_every=7", "train.log_every=5"],
            ["liveness.sample_every=7 is above train.log_every=5", "liveness.sample_every <= 5"],
            True,
        ),
        # task sequences (issue 20)
        (
            "unknown task kind",
            ["tasks.kind=shuffled"],
            ["tasks.kind='shuffled' must be one of none, permuted_vocab, corpora"],
            True,
        ),
        (
            "task length given twice",
            ["tasks.kind=permuted_vocab", "tasks.steps=10", "tasks.epochs=1"],
            ["tasks.steps=10 and epochs=1: give exactly one of them"],
            True,
        ),
        (
            "no tasks",
            ["tasks.kind=permuted_vocab", "tasks.steps=10", "tasks.count=0"],
            ["tasks.count=0 must be >= 1"],
            True,
        ),
        (
            "revival every step",
            ["revival.every=step"],
            ["revival.every='step' must be one of epoch, task"],
            True,
        ),
        (
            "revival at task boundaries without tasks",
            ["revival.every=task"],
            ["revival.every=task needs a task sequence (tasks.kind, one of permuted_vocab, corpora)"],
            True,
        ),
        (
            "task steps across a log window",
            ["tasks.kind=permuted_vocab", "tasks.steps=7", "train.epochs=1"],
            ["tasks.steps=7 must be a multiple of train.log_every=5"],
            True,
        ),
        (
            "epochs beside tasks",
            ["tasks.kind=permuted_vocab", "tasks.steps=10"],
            ["train.epochs=3 does not apply with tasks.kind=permuted_vocab", "leave train.epochs at 1"],
            True,
        ),
        (
            "task epochs across a log window",
            ["tasks.kind=permuted_vocab", "tasks.epochs=1", "train.epochs=1", "train.log_every=1000"],
            ["tasks.epochs=1 makes task 0 ", "not a multiple of train.log_every=1000"],
            False,
        ),
        (
            "corpora and a count that disagree",
            [
                "tasks.kind=corpora",
                "tasks.steps=10",
                "tasks.count=3",
                f"tasks.corpora=[{{source: text, path: {corpus}}}]",
            ],
            ["tasks.count=3 must be 1 + the 1 tasks.corpora with kind=corpora"],
            True,
        ),
        (
            "a task corpus without its path",
            ["tasks.kind=corpora", "tasks.steps=10", "tasks.corpora=[{source: text}]"],
            ["tasks.corpora[].path must be set when source=text"],
            True,
        ),
        (
            "init_from without its own tokenizer",
            [f"model.init_from={root / 'small-gpt2'}"],
            [
                f"model.init_from={root / 'small-gpt2'} holds no tokenizer",
                "data.tokenizer=bpe",
                "data.tokenizer=PATH",
            ],
            True,
        ),
    ]
    return [(n, [RECIPE, *a], e, early) for n, a, e, early in cases] + recipe_cases


def _make_tok512(root: Path, corpus: Path) -> None:
    if not (root / "tok512" / "tokenizer.json").is_file():
        from reviveformer.data import train_bpe_tokenizer

        train_bpe_tokenizer([corpus.read_text()], 512).save_pretrained(root / "tok512")


CASE_NAMES = [c[0] for c in _cases(Path("/r"), Path("/c"))]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_catalogue(name, fixtures, corpus_file, tmp_path, capsys):
    """Every bad input through the real command line: exit status 2, one message with the key(s) and what is
    valid, no traceback, no run directory, and (for what the config alone shows) no data prepared."""
    _make_tok512(fixtures, corpus_file)
    _, args, expected, early = next(c for c in _cases(fixtures, corpus_file) if c[0] == name)
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    overrides = tiny_overrides(run_dir, corpus_file)
    if early:
        overrides.append(f"data.cache_dir={cache}")
    code = main(["train", args[0], *overrides, *args[1:]])
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    for fragment in expected:
        assert fragment in err, (name, fragment, err)
    assert "Traceback" not in err
    assert err.count("error:") == 1
    assert not run_dir.exists(), f"{name}: left {sorted(p.name for p in run_dir.iterdir())}"
    assert not (early and cache.exists()), f"{name}: data was prepared before the refusal"


def test_allocation_failure_while_building_is_a_clear_error(tmp_path, corpus_file, capsys, monkeypatch):
    """An allocation error while the model is built (injected at that phase: the memory estimate passed but
    the allocator failed) is exit 2 naming the sizes, with nothing written."""
    import torch

    import reviveformer.model

    def out_of_memory(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr(reviveformer.model, "GPT2LMHeadModel", out_of_memory)
    run_dir = tmp_path / "run"
    assert main(["train", RECIPE, *tiny_overrides(run_dir, corpus_file)]) == 2
    err = capsys.readouterr().err
    assert "could not be allocated (CUDA out of memory" in err and "model.n_layer=2, model.n_embd=64" in err
    assert "lower model.n_layer or model.n_embd" in err and "Traceback" not in err
    assert not run_dir.exists()


def test_bad_yaml_recipe(fixtures, capsys):
    assert main(["train", str(fixtures / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml is not valid YAML" in err and "Traceback" not in err


def test_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    """The console entry point itself: a separate process, exit status 2, one clean line."""
    run_dir = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "reviveformer",
            "train",
            RECIPE,
            "revival.method=prune",
            f"train.output_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "revival.method='prune' must be one of none, synaptic_stripping, redo" in p.stderr
    assert "Traceback" not in p.stderr
    assert not run_dir.exists()


def test_a_shape_error_in_a_real_process(tmp_path):
    """alerts.rules given as a mapping was a raw TypeError from OmegaConf's merge."""
    run_dir = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "reviveformer",
            "train",
            RECIPE,
            "alerts.rules={dead: {above: 0.3}}",
            f"train.output_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert "'alerts.rules' must be a list" in p.stderr and "Traceback" not in p.stderr
    assert not run_dir.exists()


def test_unwritable_output_dir(tmp_path, corpus_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", RECIPE, *tiny_overrides(blocker / "run", corpus_file)])
    assert code == 2
    assert "not writable" in capsys.readouterr().err
    code = main(["train", RECIPE, *tiny_overrides(blocker, corpus_file)])
    assert code == 2
    assert "is a file" in capsys.readouterr().err


def test_audit_and_strip_bad_input(tmp_path, fixtures, capsys):
    assert main(["audit", str(tmp_path / "nothing")]) == 2
    err = (
        capsys.readouterr().err
    )  # a missing folder, not a hub repo id (issue 9 item 14 changed this message)
    assert "nothing does not exist; give a model folder" in err and "repo" not in err
    assert main(["audit", str(fixtures / "bert")]) == 2
    assert "is a 'bert' model" in capsys.readouterr().err
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["strip", str(fixtures / "small-gpt2"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # bad overrides and a missing checkpoint: exit 2, the key named, and no output folder made
    cases = [
        (
            ["audit", str(fixtures / "small-gpt2"), "liveness.threshold=-1", "--out", str(tmp_path / "a1")],
            "liveness.threshold=-1.0 must be >= 0",
        ),
        (
            [
                "audit",
                str(fixtures / "small-gpt2"),
                "liveness.sitess=[mlp_post]",
                "--out",
                str(tmp_path / "a2"),
            ],
            "did you mean 'sites'",
        ),
        (
            [
                "audit",
                str(fixtures / "small-gpt2"),
                "--gradients",
                "--grama-tau",
                "1.5",
                "--out",
                str(tmp_path / "a3"),
            ],
            "--grama-tau=1.5 must be in [0, 1)",  # revival.grama.tau's range
        ),
        (
            ["sweep", RECIPE, "--grid", "train.seed=0", "--threshold", "2000", "--out", str(tmp_path / "w1")],
            "--threshold=2000.0 must be in [0, 1000]",  # liveness.threshold's range
        ),
        (["strip", str(tmp_path / "gone"), "--out", str(tmp_path / "s1")], "gone does not exist"),
        (
            ["strip", str(fixtures / "small-gpt2"), "--out", str(tmp_path / "s2")],
            "has no tokenizer: give one with data.tokenizer=PATH",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    assert not (fixtures / "audit").exists()


def test_an_existing_run_is_not_overwritten(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    args = [
        "train",
        RECIPE,
        *tiny_overrides(run_dir, corpus_file, **{"data.max_tokens": 32 * 8 * 2, "train.epochs": 1}),
    ]
    assert main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert "already holds a run; continue it with train.resume=auto" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
