"""A damaged checkpoint is caught, never used: a run killed after its step-4 checkpoint, with that checkpoint
then damaged in place (same size), resumes (train.resume=auto) from step 2 instead, with a warning naming the
file, to the same final weights as a run straight through; a damaged newest checkpoint never costs an older
good one at rotation; one named by hand is refused (exit 2) with nothing written.

The run: 1 epoch of 6 optimizer steps, a checkpoint every 2, dropout on, so that the random state, the data
position and the optimizer state all matter to the final weights. The kill is placed by the REVIVEFORMER_FAULT
hook, as in test_resume_faults.py.
"""

from __future__ import annotations

import logging
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, killed_at, tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer import faults
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.loop import EpochEnd
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
EXTRA = {
    "data.max_tokens": 32 * 8 * 6,
    "train.epochs": 1,
    "train.checkpoint_every": 2,
    "train.checkpoint_limit": 10,
    "train.deterministic": True,
    "model.dropout": 0.1,
    "train.resume": "auto",
}


@pytest.fixture(scope="module", autouse=True)
def fast_and_one_thread():
    """No figures (not what is tested); one CPU thread, as the thread count changes float sums."""
    mp = pytest.MonkeyPatch()
    mp.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    mp.delenv(faults.ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


def _run(run_dir: Path, corpus: Path, **extra):
    return train(load_config(RECIPE, tiny_overrides(run_dir, corpus, **{**EXTRA, **extra})))


def _run_killed(run_dir: Path, corpus: Path, fault: str, **extra) -> None:
    with killed_at(fault):
        _run(run_dir, corpus, **extra)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert _run(run_dir, corpus_file).steps == 6
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def killed(tmp_path_factory, corpus_file) -> Path:
    """A run killed right after its step-4 checkpoint: checkpoints of steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    _run_killed(run_dir, corpus_file, "after_periodic_checkpoint:2")
    assert [p.name for p in ckpt.list_complete(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    return run_dir


def _copy(killed: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(killed, run_dir)
    return run_dir


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in place: the file keeps its size, so a size check alone cannot see it."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    assert path.stat().st_size == size


def _tensor_bytes(weights: Path, name: str) -> tuple[int, int]:
    """Where tensor `name`'s bytes lie in a safetensors file (8-byte header length, JSON header, data)."""
    import json

    head = weights.read_bytes()
    n = struct.unpack("<Q", head[:8])[0]
    begin, end = json.loads(head[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + begin, end - begin


def flip_weight_bits(step_dir: Path) -> str:
    weights = step_dir / "model.safetensors"
    offset, length = _tensor_bytes(weights, "transformer.h.0.mlp.c_fc.weight")
    middle = offset + length // 2 // 4 * 4
    # the lowest mantissa bit of 16 float32 values (little-endian: their first byte): a silent change
    data = bytearray(weights.read_bytes()[middle : middle + 64])
    for i in range(0, 64, 4):
        data[i] ^= 0x01
    _overwrite(weights, middle, bytes(data))
    return "model.safetensors changed since it was written"


def write_nans(step_dir: Path) -> str:
    weights = step_dir / "model.safetensors"
    offset, _ = _tensor_bytes(weights, "transformer.h.1.attn.c_attn.weight")
    _overwrite(weights, offset, struct.pack("<4f", *[math.nan] * 4))
    return "model.safetensors changed since it was written"


def garble_random_states(step_dir: Path) -> str:
    rng = step_dir / "random_states_0.pkl"
    _overwrite(rng, 0, b"\x00" * rng.stat().st_size)
    return "random_states_0.pkl changed since it was written"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [flip_weight_bits, write_nans, garble_random_states])
def test_a_damaged_checkpoint_is_skipped_and_the_resume_is_exact(
    damage, straight, killed, tmp_path, corpus_file, caplog
):
    """Each used to resume silently: flipped weights (final weights off in every tensor), NaN weights (the
    run then halted and called that checkpoint the last good one), unreadable random states (skipped by
    Accelerate without a word: dropout drew other masks). Now step 4 is skipped and step 2 resumes exactly."""
    run_dir = _copy(killed, tmp_path)
    why = damage(run_dir / "checkpoints" / "step_00000004")
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        summary = _run(run_dir, corpus_file)
    assert summary.steps == 6
    resumed = load_file(run_dir / "final" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    skipped = [r.getMessage() for r in caplog.records if "skipping damaged" in r.getMessage()]
    assert skipped == [
        f"skipping damaged checkpoint {run_dir / 'checkpoints' / 'step_00000004'} ({why} (sha256 differs)); "
        "trying an older one"
    ]


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_never_costs_the_good_one_before_it(straight, tmp_path, corpus_file):
    """checkpoint_limit=2, killed after step 6's checkpoint: step 6's optimizer.bin cut short, so the resume
    takes step 4; reaching step 6 again, the new checkpoint replaces the damaged one and rotation keeps step 4
    with it (the damaged one was never counted as one to keep), and the result is the uninterrupted run's."""
    run_dir = tmp_path / "run"
    _run_killed(run_dir, corpus_file, "after_periodic_checkpoint:3", **{"train.checkpoint_limit": 2})
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in ckpt.list_complete(checkpoints)] == ["step_00000004", "step_00000006"]
    optimizer = checkpoints / "step_00000006" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    assert ckpt.find_resume_point(checkpoints) == checkpoints / "step_00000004"
    _run_killed(run_dir, corpus_file, "after_periodic_checkpoint:1", **{"train.checkpoint_limit": 2})
    # killed right after the step-6 checkpoint of the resumed run: step 4 survived the rotation
    assert [p.name for p in ckpt.list_complete(checkpoints)] == ["step_00000004", "step_00000006"]
    assert ckpt.damage(checkpoints / "step_00000006") is None
    assert _run(run_dir, corpus_file, **{"train.checkpoint_limit": 2}).steps == 6
    resumed = load_file(run_dir / "final" / "model.safetensors")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


@pytest.mark.slow
def test_a_run_whose_only_checkpoint_is_damaged_is_not_restarted_on_top(tmp_path, corpus_file, capsys):
    """checkpoint_limit=1 and the one checkpoint damaged: `train.resume=auto` has nothing good to continue, and
    a fresh start would mix a second run into the folder's metrics, so it is refused; the damaged checkpoint
    stays (nothing is changed) and the warning names the file."""
    run_dir = tmp_path / "run"
    _run_killed(run_dir, corpus_file, "after_periodic_checkpoint:3", **{"train.checkpoint_limit": 1})
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in ckpt.list_complete(checkpoints)] == ["step_00000006"]
    optimizer = checkpoints / "step_00000006" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    before = snapshot(run_dir)
    args = ["train", RECIPE, *tiny_overrides(run_dir, corpus_file, **{**EXTRA, "train.checkpoint_limit": 1})]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run but no complete checkpoint" in err and "Traceback" not in err
    assert snapshot(run_dir) == before


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_damaged_checkpoint_named_by_hand_is_refused(killed, tmp_path, corpus_file, capsys):
    run_dir = _copy(killed, tmp_path)
    step_4 = run_dir / "checkpoints" / "step_00000004"
    why = flip_weight_bits(step_4)
    before = snapshot(run_dir)
    code = main(["train", RECIPE, *tiny_overrides(run_dir, corpus_file, **{**EXTRA, "train.resume": step_4})])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"checkpoint {step_4} is damaged ({why}" in err and "Traceback" not in err
    assert snapshot(run_dir) == before
