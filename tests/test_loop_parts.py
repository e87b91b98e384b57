"""The loop's parts (reviveformer/loop/) decide their own moments; the trainer offers hooks for scripts."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from conftest import tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer.config import load_config
from reviveformer.loop import Checkpointer, RevivalTiming, TrainWindow, Validator
from reviveformer.trainer import Trainer


def test_train_window_sums_and_restarts():
    w = TrainWindow(log_every=3, device="cpu")
    for loss in (2.0, 4.0, 9.0):
        w.add(torch.tensor(loss), tokens=100)
    assert [s for s in range(1, 10) if w.due(s)] == [3, 6, 9]
    loss, steps, rate = w.take()
    assert (float(loss), steps) == (15.0, 3)
    assert rate > 0 and math.isfinite(rate)
    assert (float(w.loss), w.steps, w.tokens) == (0.0, 0, 0)  # the next window starts empty
    assert float(loss) == 15.0  # and the taken sum is not zeroed under the caller
    w.add(torch.tensor(1.5), tokens=7)
    assert (float(w.loss), w.steps, w.tokens) == (1.5, 1, 7)
    # a skipped step adds a zero loss; its verdict, read later, takes it out of the steps and tokens
    w.add(torch.tensor(0.0), tokens=7)
    w.drop_skipped(1, tokens_per_step=7)
    assert (float(w.loss), w.steps, w.tokens) == (1.5, 1, 7)


def test_validator_cadence_and_last_measurement():
    calls, logged = [], []
    measurement = SimpleNamespace(
        evaluate=lambda: calls.append(1) or {"val/loss": 2.5, "val/ppl": math.exp(2.5)}
    )
    tracking = SimpleNamespace(log=lambda val, step: logged.append((step, val["val/loss"])))
    v = Validator(4, measurement, tracking)
    assert [s for s in range(1, 13) if v.should_validate(s)] == [4, 8, 12]
    assert not v.is_current(0)
    v.validate(8)
    assert (len(calls), logged, v.last_step) == (1, [(8, 2.5)], 8)
    v.record({"val/loss": 1.0}, 9)  # the epoch end's measurement: recorded, not logged again
    assert v.is_current(9) and not v.is_current(8) and logged == [(8, 2.5)] and v.last["val/loss"] == 1.0
    assert not any(Validator(0, measurement, tracking).should_validate(s) for s in range(1, 50))


def test_revival_timing():
    assert [s for s in range(1, 11) if RevivalTiming(True, 3).due_after_step(s)] == [3, 6, 9]
    assert not RevivalTiming(True, 3).at_epoch_end and not RevivalTiming(True, 3, "task").at_task_end
    at_tasks = RevivalTiming(True, 0, "task")
    assert (
        at_tasks.at_task_end
        and not at_tasks.at_epoch_end
        and not any(at_tasks.due_after_step(s) for s in range(9))
    )
    assert RevivalTiming(True, 0).at_epoch_end and not any(
        RevivalTiming(True, 0).due_after_step(s) for s in range(9)
    )
    off = RevivalTiming(False, 3)
    assert (
        not off.at_epoch_end
        and not RevivalTiming(False, 0, "task").at_task_end
        and not any(off.due_after_step(s) for s in range(1, 10))
    )


def test_checkpointer_saves_on_its_cadence_and_never_twice(tmp_path):
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    saved_states = []

    def state_dict():
        saved_states.append(1)
        return {"step": len(saved_states)}

    state = SimpleNamespace(state_dict=state_dict)
    c = Checkpointer(acc, tmp_path, every=3, limit=10, model=model, state=state)
    for step in range(1, 8):
        c.after_step(step)
    assert sorted(p.name for p in ckpt.list_complete(tmp_path)) == ["step_00000003", "step_00000006"]
    c.save_unless_saved(6)  # already holds this position
    assert len(saved_states) == 2
    c.save_unless_saved(7)
    assert len(saved_states) == 3 and ckpt.read_manifest(tmp_path / "step_00000007")["step"] == 7
    c.mark_saved(9)
    c.save_unless_saved(9)
    assert len(saved_states) == 3


def test_trainer_hooks_and_loop_cadences(tmp_path, corpus_file):
    """12 steps an epoch, 2 epochs, log every 5, eval every 4, checkpoints every 7: the hooks see the train
    logs at 5, 10, 15, 20 and the epoch ends before their measurements; the validations, checkpoints and
    epoch ends fall where each part's cadence puts them."""
    run = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_overrides(
            run,
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 13,
                "train.epochs": 2,
                "train.eval_every": 4,
                "train.checkpoint_every": 7,
                "train.checkpoint_limit": 10,
            },
        ),
    )
    trainer = Trainer(cfg)
    seen = []
    trainer.after_train_log.append(lambda t: seen.append(("log", t.step)))
    trainer.before_epoch_end.append(lambda t: seen.append(("epoch_end", t.step, t.epoch)))
    summary = trainer.run()
    per_epoch = summary.steps // 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [s for kind, s, *_ in seen if kind == "log"]
    assert logs == [s for s in range(1, summary.steps + 1) if s % 5 == 0]
    # the epoch counter has moved on when its end runs
    assert [e for e in seen if e[0] == "epoch_end"] == [
        ("epoch_end", per_epoch, 1),
        ("epoch_end", 2 * per_epoch, 2),
    ]
    evals = sorted({r["step"] for r in rows if "val/loss" in r})
    assert evals == sorted({s for s in range(4, summary.steps + 1, 4)} | {per_epoch, 2 * per_epoch})
    names = sorted(p.name for p in ckpt.list_complete(run / "checkpoints"))
    want = sorted({s for s in range(7, summary.steps + 1, 7)} | {per_epoch, 2 * per_epoch})
    assert names == [ckpt.step_dir_name(s) for s in want]
