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
    """Files the bad inputs point at: an empty text file, a non-GPT-2 model folder, a bad recipe, and a small
    GPT-2 checkpoint whose vocabulary (300) is smaller than a 512-token tokenizer's."""
    from transformers import GPT2Config, GPT2LMHeadModel


    root = tmp_path_factory.mktemp("bad")
    (root / "empty.txt").write_text("\n \n")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (root / "bad.yaml").write_text("train:\n  lr: [1, 2\n")
    small = root / "small-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_layer=1, n_embd=16, n_head=2, n_positions=32)).save_pretrained(small)
    return root


def _cases(root: Path, corpus: Path):
    tok512 = root / "tok512"
    return [
        ("unknown key", ["train.lrr=1"], "did you mean 'lr'"),
        ("unknown section", ["trian.lr=1"], "did you mean 'train'"),
        ("wrong type", ["train.batch_size=many"], "train.batch_size"),
        ("negative lr", ["train.lr=-0.1"], "train.lr=-0.1 must be a positive number"),
        ("fraction above 1", ["revival.fraction=1.5"], "revival.fraction=1.5 must be in (0, 1]"),
        ("fraction zero", ["revival.fraction=0"], "must be in (0, 1]"),
        ("negative threshold", ["liveness.threshold=-1"], "liveness.threshold=-1.0 must be >= 0"),
        ("unknown activation", ["model.activation=relux"], "relu, leaky_relu"),
        ("bad module:attr", ["model.activation=no_such_pkg.mod:act"], "no_such_pkg"),
        ("missing data path", ["data.source=text", f"data.path={root / 'missing.txt'}"], "missing.txt does not exist"),
        ("empty dataset", ["data.source=text", f"data.path={root / 'empty.txt'}"], "too little text"),
        ("block size over positions", ["data.block_size=64", "model.n_positions=32"],
         "data.block_size=64 is above model.n_positions=32"),
        ("init_from not GPT-2", [f"model.init_from={root / 'bert'}"], "is a 'bert' model"),
        ("init_from without config", [f"model.init_from={root}"], "has no config.json"),
        ("vocabulary mismatch", [f"model.init_from={root / 'small-gpt2'}", f"data.tokenizer={tok512}",
                                 "data.source=text", f"data.path={corpus}"], "vocabulary mismatch"),
        ("unknown tokenizer", ["data.tokenizer=/no/such/tokenizer"], "data.tokenizer=/no/such/tokenizer"),
    ]


def _make_tok512(root: Path, corpus: Path) -> None:
    if not (root / "tok512" / "tokenizer.json").is_file():
        from reviveformer.data import train_bpe_tokenizer

        train_bpe_tokenizer([corpus.read_text()], 512).save_pretrained(root / "tok512")


@pytest.mark.parametrize("case", range(16), ids=lambda i: str(i))
def test_bad_input_catalogue(case, fixtures, corpus_file, tmp_path, capsys):
    _make_tok512(fixtures, corpus_file)
    name, bad, expected = _cases(fixtures, corpus_file)[case]
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, corpus_file) + bad
    code = main(["train", RECIPE, *overrides])
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    assert expected in err, (name, err)
    assert "Traceback" not in err
    assert err.count("error:") == 1
    assert not run_dir.exists(), f"{name}: left {sorted(p.name for p in run_dir.iterdir())}"


def test_bad_yaml_recipe(fixtures, capsys):
    assert main(["train", str(fixtures / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml is not valid YAML" in err and "Traceback" not in err


def test_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    """The console entry point itself: a separate process, exit status 2, one clean line."""
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "reviveformer", "train", RECIPE, "revival.method=prune",
                        f"train.output_dir={run_dir}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "revival.method='prune' must be one of none, synaptic_stripping, redo" in p.stderr
    assert "Traceback" not in p.stderr
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
    assert "could not be read as a Hugging Face model" in capsys.readouterr().err
    assert main(["audit", str(fixtures / "bert")]) == 2
    assert "is a 'bert' model" in capsys.readouterr().err
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["strip", str(fixtures / "small-gpt2"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    args = ["train", RECIPE, *tiny_overrides(run_dir, corpus_file, **{"data.max_tokens": 32 * 8 * 2, "train.epochs": 1})]
    assert main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert "already holds a run; continue it with train.resume=auto" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
