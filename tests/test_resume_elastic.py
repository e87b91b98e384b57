"""Resume on another number of processes (a preempted 2-process run continued on 1, and back), with
`accelerate launch` on CPU: the same total tokens, the data position and the revival masks carried, one
warning that the result cannot be bit-identical. Also: `train.eval_batches` is a global number of batches, so
the epoch-end measurement sees the same tokens on 1 and 2 processes.

Data: 12 batches of 8 sequences of 32 tokens per epoch, 2 epochs: 24 x 256 = 6,144 training tokens in all,
12 steps an epoch on 1 process, 6 on 2. The first run is killed by the REVIVEFORMER_FAULT hook right after a
periodic checkpoint, in the second epoch (after the first epoch's stripping).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import REPO, launch, tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer import faults

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
EXTRA = {
    "data.max_tokens": 32 * 8 * 12,
    "train.epochs": 2,
    "train.checkpoint_every": 4,
    "train.checkpoint_limit": 10,
    "train.eval_batches": 1,
    "data.val_fraction": 0.2,
    "revival.method": "synaptic_stripping",
    "revival.fraction": 0.3,
    "liveness.dead_frequency": 0.2,
    "train.resume": "auto",
}


def train(
    n: int, run_dir: Path, corpus: Path, fault: str | None = None, **extra
) -> subprocess.CompletedProcess:
    """`train` on `n` processes; one is a plain process, so that a fault's exit status comes back as it is."""
    args = ["train", RECIPE, *tiny_overrides(run_dir, corpus, **EXTRA, **extra)]
    # an empty REVIVEFORMER_FAULT is no fault (faults.fault_point)
    return launch("reviveformer", args, n, env={faults.ENV: fault or ""}, accelerate=n > 1)


def check_run(
    run_dir: Path, out: str, steps: int, masks_at: str, epochs: int = 2, tokens: str = "6,144"
) -> None:
    assert (
        f"steps: {steps}  epochs: {epochs}  tokens: {tokens}" in out
    )  # the tokens of one run straight through
    assert sorted(p.name for p in (run_dir / "liveness").glob("epoch_*.json")) == [
        f"epoch_{e:03d}.json" for e in range(epochs)
    ]
    for name in [f"epoch_{e:03d}.json" for e in range(epochs)]:
        # eval_batches=1: one batch of 8 x 32 tokens, whatever the process count
        assert json.loads((run_dir / "liveness" / name).read_text())["tokens"] == 8 * 32, name
    # the first epoch's stripping (saved before the kill) is still in force in the final weights
    masks = ckpt.read_state(run_dir / "checkpoints" / masks_at)["reviver"]["masks"]
    final = load_file(run_dir / "final" / "model.safetensors")
    assert sum(int(m.sum()) for m in masks.values()) > 0
    for layer, m in masks.items():
        assert (final[f"transformer.h.{layer}.mlp.c_fc.weight"][m] == 0).all(), layer


@pytest.mark.slow
def test_one_process_resumed_on_two(tmp_path, corpus_file):
    run_dir = tmp_path / "1to2"
    # killed after the periodic checkpoint of step 16 (epoch 1, 4 of its 12 batches done)
    p = train(1, run_dir, corpus_file, fault="after_periodic_checkpoint:4")
    assert p.returncode == faults.EXIT_KILLED, p.stderr[-3000:]
    assert [c.name for c in ckpt.list_complete(run_dir / "checkpoints")][-1] == "step_00000016"
    p = train(2, run_dir, corpus_file)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("processes: 1 -> 2") == 1 and "bit-identical" in p.stderr
    # 8 batches of the epoch are left: 4 steps of 2 x 8 sequences
    check_run(run_dir, p.stdout + p.stderr, steps=16 + 4, masks_at="step_00000016")


@pytest.mark.slow
def test_two_processes_resumed_on_one(tmp_path, corpus_file):
    """With a step budget: train.max_steps=10 on 2 processes is 10 x 2 x 8 sequences (5,120 tokens, 4 steps
    into the second epoch); resumed on 1 process after step 8, the 2 steps left become 4."""
    run_dir = tmp_path / "2to1"
    # killed after the periodic checkpoint of step 8 (epoch 1, 2 of its 6 steps: 4 of 12 batches done)
    p = train(2, run_dir, corpus_file, fault="after_periodic_checkpoint:2", **{"train.max_steps": 10})
    assert p.returncode != 0, p.stderr[-3000:]
    assert [c.name for c in ckpt.list_complete(run_dir / "checkpoints")][-1] == "step_00000008"
    # the training window saved is the sum over both processes: steps 6-8 (log_every=5), 2 x 8 x 32 tokens each
    window = ckpt.read_state(run_dir / "checkpoints" / "step_00000008")["monitor"]["sites"]["mlp_post"]
    assert window["tokens"].tolist() == [3 * 2 * 8 * 32] * 2
    p = train(1, run_dir, corpus_file, **{"train.max_steps": 10})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("processes: 2 -> 1") == 1 and "bit-identical" in p.stderr
    # the budget ends mid-epoch: one epoch ended, and the second epoch's position is kept
    check_run(run_dir, p.stdout + p.stderr, steps=8 + 4, masks_at="step_00000008", epochs=1, tokens="5,120")
    state = ckpt.read_state(run_dir / "checkpoints" / "step_00000012")
    assert (state["epoch"], state["batches_in_epoch"], state["num_processes"]) == (1, 8, 1)
