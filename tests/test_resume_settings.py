"""Resuming with changed settings: what would change the checkpoint's meaning is refused (exit 2, the key, its
saved and new values, the run directory left byte-identical); what may change is announced in one warning
and takes effect (docs/design.md, "Resuming")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
# 1 epoch of 6 steps, stripping at its end
EXTRA = {
    "data.max_tokens": 32 * 8 * 6,
    "train.epochs": 1,
    "revival.method": "synaptic_stripping",
    "revival.fraction": 0.3,
    "liveness.dead_frequency": 0.2,
    "train.resume": "auto",
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("settings") / "run"
    summary = train(load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **EXTRA)))
    assert summary.steps == 6
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "new", "shown"),
    [
        ("model.n_layer", 3, "model.n_layer: 2 -> 3"),
        ("revival.method", "redo", "revival.method: 'synaptic_stripping' -> 'redo'"),
        ("revival.method", "none", "revival.method: 'synaptic_stripping' -> 'none'"),
        ("train.batch_size", 4, "train.batch_size: 8 -> 4"),
        ("data.block_size", 16, "data.block_size: 32 -> 16"),
        ("train.lr", 0.5, "train.lr: 0.002 -> 0.5"),
    ],
)
def test_refused_change_exits_2_and_writes_nothing(done_run, corpus_file, capsys, key, new, shown):
    before = snapshot(done_run)
    code = main(["train", RECIPE, *tiny_overrides(done_run, corpus_file, **{**EXTRA, key: new})])
    err = capsys.readouterr().err
    assert code == 2, err
    assert shown in err and "Traceback" not in err and "Nothing was changed" in err
    assert snapshot(done_run) == before


@pytest.mark.slow
def test_allowed_change_warns_once_and_takes_effect(done_run, tmp_path, corpus_file, caplog):
    import shutil

    run_dir = tmp_path / "more"
    shutil.copytree(done_run, run_dir)
    extra = {**EXTRA, "train.epochs": 2, "train.log_every": 3}
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        summary = train(load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **extra)))
    warnings = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
    assert len(warnings) == 1
    assert "train.epochs: 1 -> 2" in warnings[0] and "train.log_every: 5 -> 3" in warnings[0]
    # one more epoch of 6 steps, its own epoch end, and the new log interval from the resumed step on
    assert (summary.steps, summary.epochs) == (12, 2)
    assert (run_dir / "liveness" / "epoch_001.json").is_file()
    import json

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 9, 12]


@pytest.mark.slow
def test_max_steps_mid_epoch_keeps_the_epoch_open(tmp_path, corpus_file):
    """max_steps=5 stops in the first of 2 epochs of 12 steps: the epoch has not ended (no epoch-end file, the
    checkpoint says epoch 0, batch 5). Resumed without max_steps, the run continues that epoch's data: with a
    constant learning rate it ends bit-identical to a run straight through (24 steps, 6,144 tokens)."""
    from safetensors.torch import load_file

    from reviveformer import checkpoint as ckpt

    extra = {
        **EXTRA,
        "data.max_tokens": 32 * 8 * 12,
        "train.epochs": 2,
        "train.warmup_steps": 0,
        "train.min_lr_ratio": 1.0,
        "train.deterministic": True,
    }
    straight = tmp_path / "straight"
    train(load_config(RECIPE, tiny_overrides(straight, corpus_file, **extra)))
    run_dir = tmp_path / "budget"
    summary = train(
        load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **extra, **{"train.max_steps": 5}))
    )
    assert (summary.steps, summary.epochs, summary.tokens) == (5, 0, 5 * 256)
    assert not (run_dir / "liveness" / "epoch_000.json").exists()
    state = ckpt.read_state(run_dir / "checkpoints" / "step_00000005")
    assert (state["epoch"], state["batches_in_epoch"]) == (0, 5)
    summary = train(load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **extra)))
    assert (summary.steps, summary.epochs, summary.tokens) == (24, 2, 24 * 256)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(run_dir / "final" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name in ("epoch_000.json", "epoch_001.json"):
        assert (straight / "liveness" / name).read_text() == (run_dir / "liveness" / name).read_text()


def test_a_key_added_after_the_checkpoint_counts_as_its_default():
    """A checkpoint saved before a key existed (here the Adam betas, hard-coded until then) resumes when the key
    is at its default, the value the old code used; any other value is a refused change."""
    import copy

    from reviveformer.config import Config, to_dict
    from reviveformer.errors import CheckpointError
    from reviveformer.resume import compare_settings

    new = to_dict(Config())
    saved = copy.deepcopy(new)
    del saved["train"]["adam_beta2"]
    assert compare_settings(saved, new, "ckpt") == []
    new["train"]["adam_beta2"] = 0.999
    with pytest.raises(CheckpointError, match=r"train\.adam_beta2: None -> 0\.999"):
        compare_settings(saved, new, "ckpt")
