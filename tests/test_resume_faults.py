"""A run killed at any named phase resumes (train.resume=auto) to the same final weights and the same
liveness files as a run straight through: no timing, the kill is placed by the REVIVEFORMER_FAULT hook.

The run: 2 epochs of 6 optimizer steps, a periodic checkpoint every 2 steps (so one falls on each epoch's
last step, right before the epoch-end checkpoint of the same step), dropout on and synaptic stripping at each
epoch end, so the RNG, the data position, the masks and the optimizer state all matter. Checkpoint writes in
order: steps 2, 4, 6 (periodic), 6 (epoch end), 8, 10, 12 (periodic), 12 (epoch end).

In-process cases replace only the hook's `os._exit` by an exception (nothing in the trainer's clean-up writes
a checkpoint, liveness file or final/), and skip the figures, to keep the test fast; one case runs the real
command in a subprocess and is killed by the hook's own `os._exit(137)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, killed_at, tiny_overrides
from reviveformer import faults
from reviveformer.config import load_config
from reviveformer.loop import EpochEnd
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
EXTRA = {
    "data.max_tokens": 32 * 8 * 6,
    "train.epochs": 2,
    "train.checkpoint_every": 2,
    "train.checkpoint_limit": 10,
    "train.deterministic": True,
    "model.dropout": 0.1,
    "revival.method": "synaptic_stripping",
    "revival.fraction": 0.3,
    "liveness.dead_frequency": 0.2,
    "train.resume": "auto",
}


@pytest.fixture
def no_figures(monkeypatch):
    monkeypatch.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    monkeypatch.setattr("reviveformer.figures.plot_revived_per_layer", lambda details, path: None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread here as in the subprocess (OMP_NUM_THREADS=1): the thread count changes float sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(run_dir: Path, corpus: Path):
    return train(load_config(RECIPE, tiny_overrides(run_dir, corpus, **EXTRA)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file):
    mp = pytest.MonkeyPatch()
    mp.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    mp.setattr("reviveformer.figures.plot_revived_per_layer", lambda details, path: None)
    mp.delenv(faults.ENV, raising=False)
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    try:
        summary = _run(run_dir, corpus_file)
    finally:
        mp.undo()
    assert (summary.steps, summary.epochs) == (12, 2)
    return run_dir


def assert_same_result(straight: Path, resumed: Path) -> None:
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # stripping acted at the last epoch end, so a skipped epoch end would show in the weights
    assert sum(int((a[f"transformer.h.{i}.mlp.c_fc.weight"] == 0).sum()) for i in range(2)) > 0
    names = sorted(p.name for p in (straight / "liveness").iterdir())
    # the liveness files and the epoch-end activation histograms, each identical after the resume
    assert names == [
        "activations_epoch_000.json",
        "activations_epoch_001.json",
        "epoch_000.json",
        "epoch_001.json",
        "final.json",  # the measurement of final/'s weights (after the last epoch end's revival)
    ]
    assert sorted(p.name for p in (resumed / "liveness").iterdir()) == names
    for name in names:
        assert json.loads((straight / "liveness" / name).read_text()) == json.loads(
            (resumed / "liveness" / name).read_text()
        ), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "mid_step:4",
        "mid_step:11",  # mid-step, middle and last epoch
        "after_periodic_checkpoint:3",
        "after_periodic_checkpoint:6",  # steps 6 and 12: each epoch's last step
        "epoch_end_measure:1",
        "epoch_end_measure:2",
        "after_revival:1",
        "after_revival:2",
        "checkpoint_write:4",
        "checkpoint_write:8",  # the epoch-end checkpoints of steps 6, 12
        "checkpoint_replace:2",  # step 12's periodic one removed, not renamed
        "final_write:1",
    ],
)
def test_killed_at_a_phase_resumes_to_the_same_result(
    fault, straight, tmp_path, corpus_file, monkeypatch, no_figures
):
    run_dir = tmp_path / "run"
    with killed_at(fault):
        _run(run_dir, corpus_file)
    assert not (run_dir / "final").exists()
    summary = _run(run_dir, corpus_file)
    assert (summary.steps, summary.epochs) == (12, 2)
    assert_same_result(straight, run_dir)


@pytest.mark.slow
def test_killed_by_the_hook_in_a_real_process_resumes(straight, tmp_path, corpus_file):
    """The issue's case, with a real process end: killed right after the periodic checkpoint of the last step,
    before the epoch-end checkpoint of that step; the resume must still run the last epoch end."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "reviveformer",
        "train",
        RECIPE,
        *tiny_overrides(run_dir, corpus_file, **EXTRA),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", faults.ENV: "after_periodic_checkpoint:6"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == faults.EXIT_KILLED, p.stderr[-2000:]
    assert not (run_dir / "liveness" / "epoch_001.json").exists()
    env.pop(faults.ENV)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same_result(straight, run_dir)
