"""The optimizer step costs no host sync: a non-finite step is skipped on the device (weights and AdamW state
untouched), its verdict and the stop vote are read at the train log, and the halt past train.max_bad_steps
comes at that read."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.run_status import read_status
from reviveformer.trainer import Trainer

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
GRAMA = str(REPO / "recipes" / "dying-relu-grama.yaml")
# 12 batches per epoch, 2 epochs; nothing but the train log (every 4 steps) reads the device between epochs
SHORT = {"data.max_tokens": 32 * 8 * 12, "train.epochs": 2, "train.log_every": 4, "train.checkpoint_every": 0}

# The Tensor methods that copy a value to the host (a sync on an accelerator). On the CPU they cost nothing,
# so they are counted by name: what a GPU would wait on.
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _trainer(run_dir, corpus, recipe: str = RECIPE, **extra) -> Trainer:
    return Trainer(load_config(recipe, tiny_overrides(run_dir, corpus, **{**SHORT, **extra})))


def _no_packed_sequence_check(monkeypatch) -> None:
    """transformers' eager causal-mask builder reads the device once per forward to find packed sequences
    (`find_packed_sequence_indices`: `(...).all()` then a Python `if`; skipped when compiled). The blocks here
    are never packed sequences (it always answers None): out of the count, so that the test sees the
    trainer's own reads. An open cost of the eager HF forward, not of the step."""
    from transformers import masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def _count_reads(monkeypatch) -> list[int]:
    """Patch the host reads of every Tensor to count while `counter[1]` is set; returns the counter."""
    _no_packed_sequence_check(monkeypatch)
    counter = [0, 0]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, **kwargs):
            counter[0] += counter[1]
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counter


@pytest.mark.parametrize("recipe", [RECIPE, GRAMA], ids=["monitor", "grama"])
def test_no_host_read_in_a_step_between_logs(tmp_path, corpus_file, monkeypatch, recipe):
    """Every optimizer step (forward, backward, clip, verdict, update, step-level work) reads nothing from the
    device unless the train log is due; the log reads (the counter sees reads)."""
    trainer = _trainer(tmp_path / "run", corpus_file, recipe)
    counter = _count_reads(monkeypatch)
    reads: dict[int, int] = {}
    train_step, after_step = Trainer.train_step, Trainer._after_step

    def counted_train_step(self, batch):
        counter[:] = [0, 1]
        grad_norm = train_step(self, batch)
        counter[1] = 0
        if grad_norm is None:  # accumulating: counted with the step it belongs to
            reads[self.pos.step + 1] = reads.get(self.pos.step + 1, 0) + counter[0]
        return grad_norm

    def counted_after_step(self, grad_norm):
        counter[1] = 1
        stopped_by = after_step(self, grad_norm)
        counter[1] = 0
        reads[self.pos.step] = reads.get(self.pos.step, 0) + counter[0]
        return stopped_by

    monkeypatch.setattr(Trainer, "train_step", counted_train_step)
    monkeypatch.setattr(Trainer, "_after_step", counted_after_step)
    summary = trainer.run()
    assert summary.steps == 24 and sorted(reads) == list(range(1, 25))
    per_step = {step: n for step, n in reads.items() if step % 4}
    assert per_step == dict.fromkeys(per_step, 0), per_step
    assert all(reads[step] > 0 for step in range(4, 25, 4)), reads


def _optimizer_state(trainer: Trainer) -> list[torch.Tensor]:
    """Every weight and every AdamW state tensor (step, exp_avg, exp_avg_sq), copied."""
    state = trainer._inner_optimizer.state
    out = [p.detach().clone() for p in trainer._params]
    for p in trainer._params:
        out += [state[p][k].clone() for k in sorted(state[p])] if p in state else []
    return out


@pytest.mark.parametrize(
    "activation", ["custom_act:NanOnFifthTrainingCall", "custom_act:InfGradOnFifthTrainingCall"]
)
def test_a_skipped_step_leaves_weights_and_adamw_state_bit_identical(
    tmp_path, corpus_file, monkeypatch, activation
):
    """A NaN loss (or an inf gradient behind a finite loss) at step 5: after it, every weight and every AdamW
    state tensor equals its copy from before it, bit for bit; the step after it moves them all."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    overrides = {
        "model.activation": activation,
        "train.max_bad_steps": 1,
        "train.epochs": 1,
        "train.max_steps": 7,
    }
    trainer = _trainer(tmp_path / "run", corpus_file, **overrides)
    snapshots: dict[int, list[torch.Tensor]] = {}
    train_step = Trainer.train_step

    def recorded(self, batch):
        snapshots.setdefault(self.pos.step, _optimizer_state(self))  # before step pos.step + 1
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recorded)
    summary = trainer.run()
    assert (summary.steps, trainer.pos.bad_steps) == (7, 1)
    before, after, next_ = snapshots[4], snapshots[5], snapshots[6]
    assert len(before) == len(after) == 4 * len(trainer._params)  # each weight, its step, exp_avg, exp_avg_sq
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # step 6 moved every one of them (the comparison above could fail), and nothing non-finite reached them
    assert not any(torch.equal(a, b) for a, b in zip(after, next_, strict=True))
    assert all(torch.isfinite(t).all() for t in next_)


def test_the_halt_comes_at_the_read_and_names_the_bad_step(tmp_path, corpus_file, capsys, monkeypatch):
    """train.max_bad_steps=0, a NaN loss at step 5: the verdict is read at the train log of step 8, which halts
    with the message of step 5 (its loss and gradient norm); steps 6-8 trained from the weights of step 4."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    run_dir = tmp_path / "run"
    args = tiny_overrides(
        run_dir, corpus_file, **{**SHORT, "model.activation": "custom_act:NanOnFifthTrainingCall"}
    )
    assert main(["train", RECIPE, *args]) == 3
    err = capsys.readouterr().err
    assert (
        "non-finite loss or gradient at step 5 (loss nan, grad norm nan); the optimizer update was skipped"
        in err
    )
    assert "Stopping: 1 such step(s), train.max_bad_steps=0; no checkpoint was saved before it" in err
    assert "Traceback" not in err
    status = read_status(run_dir)
    assert (status.state, status.step) == ("halted", 8)


def test_grama_counts_only_the_steps_that_trained(tmp_path, corpus_file, monkeypatch):
    """GraMa's window mean divides by the steps whose gradients it scored: a skipped step (zero gradients shown,
    the count corrected at the read) leaves its sums and count as if the step had not been offered."""
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    overrides = {
        "model.activation": "custom_act:NanOnFifthTrainingCall",
        "train.max_bad_steps": 1,
        "train.epochs": 1,
        "train.max_steps": 8,
        "revival.every_steps": 0,
    }
    trainer = _trainer(tmp_path / "run", corpus_file, GRAMA, **overrides)
    sums: dict[int, list[torch.Tensor]] = {}
    train_step = Trainer.train_step

    def recorded(self, batch):
        sums.setdefault(self.pos.step, [t.clone() for t in self.reviver._sums.values()])
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recorded)
    trainer.run()
    assert trainer.reviver.steps == 7  # 8 steps, one skipped (read at the log of step 8)
    assert len(sums[5]) == 2 and all(torch.equal(a, b) for a, b in zip(sums[4], sums[5], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(sums[5], sums[6], strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
def test_no_cuda_sync_in_a_step_between_logs(tmp_path, corpus_file, monkeypatch):
    """On a GPU, CUDA itself says so: its sync debug mode raises on any synchronising call in a non-log step
    (the CPU test above counts the Tensor reads; this one sees every sync, copies included)."""
    trainer = _trainer(tmp_path / "run", corpus_file)
    _no_packed_sequence_check(monkeypatch)
    train_step, after_step = Trainer.train_step, Trainer._after_step
    steps = []

    def in_mode(quiet: bool, call):
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")
        try:
            return call()
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def checked_train_step(self, batch):
        # the first step builds the optimizer state; a log step reads by design
        quiet = self.pos.step >= 1 and (self.pos.step + 1) % 4 != 0
        return in_mode(quiet, lambda: train_step(self, batch))

    def checked_after_step(self, grad_norm):
        steps.append(self.pos.step)
        return in_mode(self.pos.step > 1 and self.pos.step % 4 != 0, lambda: after_step(self, grad_norm))

    monkeypatch.setattr(Trainer, "train_step", checked_train_step)
    monkeypatch.setattr(Trainer, "_after_step", checked_after_step)
    assert trainer.run().steps == 24 and steps == list(range(1, 25))
