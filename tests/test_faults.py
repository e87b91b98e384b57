"""Faults: a non-finite loss stops (or skips) the step before the update; W&B failures never stop training.
Kills at every phase of training, and the resumes after them, are in test_resume_faults.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.run_status import read_status
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
TESTS = Path(__file__).resolve().parent


def test_non_finite_loss_stops_before_the_update(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "nan"
    code = main(
        [
            "train",
            RECIPE,
            *tiny_overrides(
                run_dir,
                corpus_file,
                **{
                    "model.activation": "custom_act:NanOnFifthTrainingCall",
                    "train.checkpoint_every": 2,
                    "train.checkpoint_limit": 10,
                    "data.max_tokens": 32 * 8 * 20,
                },
            ),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert "non-finite loss or gradient at step 5 (loss nan" in err and "Traceback" not in err
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_00000004'}" in err
    assert [p.name for p in ckpt.list_complete(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    last = load_file(run_dir / "checkpoints" / "step_00000004" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
    assert not (run_dir / "final").exists()


def test_a_halt_before_any_checkpoint_says_there_is_none(tmp_path, corpus_file, capsys, monkeypatch):
    """The halt named "the last good checkpoint" in a folder that had none."""
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "nan"
    overrides = {"model.activation": "custom_act:NanOnFifthTrainingCall", "train.checkpoint_every": 0}
    assert main(["train", RECIPE, *tiny_overrides(run_dir, corpus_file, **overrides)]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 5" in err and "no checkpoint was saved before it" in err
    assert ckpt.list_complete(run_dir / "checkpoints") == []
    assert read_status(run_dir).state == "halted"


def test_bounded_skips_instead_of_stopping(tmp_path, corpus_file, caplog, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir = tmp_path / "skip"
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        summary = train(
            load_config(
                RECIPE,
                tiny_overrides(
                    run_dir,
                    corpus_file,
                    **{
                        "model.activation": "custom_act:NanOnFifthTrainingCall",
                        "train.max_bad_steps": 1,
                        "data.max_tokens": 32 * 8 * 10,
                    },
                ),
            )
        )
    assert "the optimizer update was skipped (1 of train.max_bad_steps=1)" in caplog.text
    # 3 epochs of 10 batches: 30 optimizer steps, one of them with its update skipped (it counts as a step,
    # so that the host never waits for the verdict); the tokens seen are those of the 29 that trained
    assert (summary.steps, summary.tokens) == (30, 29 * 8 * 32)
    final = load_file(run_dir / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_wandb_init_failure_warns_once_and_trains_on(tmp_path, corpus_file, caplog, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved W&B login
    run_dir = tmp_path / "wb-online"
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        summary = train(
            load_config(
                RECIPE,
                tiny_overrides(
                    run_dir,
                    corpus_file,
                    **{"wandb.mode": "online", "data.max_tokens": 32 * 8 * 10, "train.epochs": 1},
                ),
            )
        )
    assert summary.steps == 10
    assert caplog.text.count("W&B init failed") == 1
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 10]


def test_wandb_log_failure_warns_once_and_trains_on(tmp_path, corpus_file, caplog, monkeypatch):
    import wandb

    def broken_log(self, *a, **k):
        raise ConnectionError("W&B service went away")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken_log)
    run_dir = tmp_path / "wb-log"
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        summary = train(
            load_config(
                RECIPE,
                tiny_overrides(
                    run_dir,
                    corpus_file,
                    **{"wandb.mode": "offline", "data.max_tokens": 32 * 8 * 10, "train.epochs": 1},
                ),
            )
        )
    assert summary.steps == 10
    assert caplog.text.count("W&B log failed") == 1
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in r for r in rows)


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_non_finite_gradient_stops_before_the_update(tmp_path, corpus_file, capsys, monkeypatch, precision):
    """A NaN gradient behind a finite loss: caught before the update in fp32 and in fp16 on CPU (where
    Accelerate runs without a gradient scaler), and no checkpoint holds a non-finite weight."""
    run_dir = tmp_path / precision
    args = [
        "train",
        RECIPE,
        *tiny_overrides(
            run_dir,
            corpus_file,
            **{
                "model.activation": "custom_act:NanGradOnFifthTrainingCall",
                "train.checkpoint_every": 2,
                "train.checkpoint_limit": 10,
                "train.mixed_precision": precision,
                "data.max_tokens": 32 * 8 * 20,
            },
        ),
    ]
    if precision == "no":
        monkeypatch.syspath_prepend(str(TESTS))
        code, err = main(args), capsys.readouterr().err
    else:  # Accelerate's mixed precision is fixed once per process: a process of its own
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.run(
            [sys.executable, "-m", "reviveformer", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        code, err = p.returncode, p.stderr
    assert code == 3, err
    assert "non-finite loss or gradient at step 5" in err and "Traceback" not in err
    assert [p.name for p in ckpt.list_complete(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    for step in ("step_00000002", "step_00000004"):
        weights = load_file(run_dir / "checkpoints" / step / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), step


def test_no_checkpoint_with_non_finite_weights(tmp_path):
    from reviveformer.errors import TrainingHalted

    model = torch.nn.Linear(3, 2)
    ckpt.check_finite_weights(model, "x")  # finite: no error
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(
        TrainingHalted, match="1 weight tensor.*bias.*the checkpoint of step 7 was not written"
    ):
        ckpt.check_finite_weights(model, "the checkpoint of step 7")
