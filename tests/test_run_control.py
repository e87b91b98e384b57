"""Who may run in a folder and how a run ends (issue 18): one run per folder, no fresh start on top of an old run,
preemption saves and resumes exactly, a stop is recorded, and the reported final numbers are those of final/.

Every moment is explicit: signals are sent by the REVIVEFORMER_FAULT hook at a named phase, never by a timer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import REPO, launch, tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.data import prepare_data
from reviveformer.run_lock import RunLock
from reviveformer.run_status import read_status

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
STRIPPING = str(REPO / "recipes" / "quickstart-stripping.yaml")
SHORT = {"data.max_tokens": 32 * 8 * 12, "train.epochs": 2, "model.dropout": 0.1, "train.checkpoint_every": 0}


def _args(recipe: str, run_dir: Path, corpus: Path, **extra) -> list[str]:
    return ["train", recipe, *tiny_overrides(run_dir, corpus, **{**SHORT, **extra})]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _token_mean_loss(model_dir: Path, input_ids: torch.Tensor) -> float:
    """The validation loss of a saved model by hand: plain transformers, next-token cross-entropy summed over
    every validation block, divided by the number of predicted tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in input_ids.split(8):
            logits = model(input_ids=ids).logits[:, :-1]
            target = ids[:, 1:]
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).double(), target.reshape(-1), reduction="sum"
            )
            count += target.numel()
    return float(total) / count


# ------------------------------------------------------------------------------------------- one run per folder


def test_a_second_run_on_a_locked_folder_is_refused_and_writes_nothing(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    holder = RunLock(run_dir)
    assert holder.try_acquire() is None
    holder.announce()
    try:
        assert main(_args(RECIPE, run_dir, corpus_file, **{"train.max_steps": 2})) == 2
        err = capsys.readouterr().err
        assert "in use by another run" in err and '"pid"' in err and "Traceback" not in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing of the second run
    finally:
        holder.release()
    # the holder gone (a killed run's lock goes with its process), the folder is free again
    assert main(_args(RECIPE, run_dir, corpus_file, **{"train.max_steps": 2})) == 0
    assert read_status(run_dir).state == "finished"


def test_a_refused_run_leaves_no_folder_behind(tmp_path, corpus_file, capsys):
    """The lock creates the folder; a set-up that then fails (here: a resume path that is no checkpoint) removes
    it again."""
    run_dir = tmp_path / "new" / "run"
    args = _args(RECIPE, run_dir, corpus_file, **{"train.resume": str(tmp_path)})
    assert main(args) == 2
    assert "is not a complete reviveformer checkpoint" in capsys.readouterr().err
    assert not run_dir.exists()


def test_resume_auto_refuses_a_folder_with_a_run_but_no_checkpoint(tmp_path, corpus_file, capsys):
    run_dir = tmp_path / "run"
    assert main(_args(RECIPE, run_dir, corpus_file, **{"train.max_steps": 2})) == 0
    for path in (run_dir / "checkpoints").iterdir():
        shutil.rmtree(path)
    before = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    # another model on top of the old run: its metrics and alerts would have been mixed into the old ones
    assert main(_args(RECIPE, run_dir, corpus_file, **{"train.resume": "auto", "model.n_embd": 32})) == 2
    err = capsys.readouterr().err
    assert "holds a run but no complete checkpoint" in err and str(run_dir) in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before


# ------------------------------------------------------------------------------------------- preemption


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file) -> dict[str, torch.Tensor]:
    """The final weights of the run below never interrupted, trained once here in this process (one torch
    thread, as in the launched processes), for both signals."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert main(_args(RECIPE, run_dir, corpus_file)) == 0
    return _weights(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_at_the_step_boundary_and_the_resume_is_exact(
    tmp_path, corpus_file, signal_name, straight
):
    """The signal arrives inside step 3 (after its backward pass): the run goes on to the next train log (step 5,
    where the trainer reads the device; no host sync per step), saves step 5 and exits 75; resumed, it ends
    with the weights of a run that was never interrupted (dropout 0.1: the random streams must be restored
    too)."""
    stopped = tmp_path / "stopped"
    fault = {"REVIVEFORMER_FAULT": f"mid_step:3:{signal_name}"}
    p = launch("reviveformer", _args(RECIPE, stopped, corpus_file), 1, accelerate=False, env=fault)
    assert p.returncode == 75, p.stderr[-3000:]
    assert f"preempted: {signal_name} at step 5" in p.stderr and "Traceback" not in p.stderr
    assert ckpt.find_resume_point(stopped / "checkpoints").name == "step_00000005"
    assert not (stopped / "final").exists()
    assert read_status(stopped).state == "preempted"

    resume = _args(RECIPE, stopped, corpus_file, **{"train.resume": "auto"})
    p = launch("reviveformer", resume, 1, accelerate=False, env={"REVIVEFORMER_FAULT": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = straight, _weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_status(stopped).state == "finished"


@pytest.mark.slow
def test_two_processes_stop_together_when_only_one_is_signalled(tmp_path, corpus_file):
    """SIGTERM reaches rank 1 alone, inside step 3: the request rides on the step's loss all-reduce and is read
    at the next train log, so both processes save step 5 together (a process that went on alone would hang the
    other in a collective): the step one process stops at (the test above), whatever the process count."""
    run_dir = tmp_path / "run"
    p = launch(
        "reviveformer",
        _args(RECIPE, run_dir, corpus_file),
        2,
        env={"REVIVEFORMER_FAULT": "mid_step:3:SIGTERM@1"},
    )
    assert p.returncode != 0
    assert "preempted: SIGTERM at step 5" in p.stderr or "preempted: a stop signal at step 5" in p.stderr
    assert ckpt.find_resume_point(run_dir / "checkpoints").name == "step_00000005"
    assert read_status(run_dir).state == "preempted"


# ------------------------------------------------------------------------------------------- reports


@pytest.mark.slow
def test_two_processes_with_fewer_batches_than_processes_are_refused(tmp_path, corpus_file):
    """One whole training batch for two processes: refused at set-up (not "steps: 0" and an untrained final/)."""
    cfg = load_config(RECIPE, tiny_overrides(tmp_path / "probe", corpus_file, **SHORT))
    blocks = len(prepare_data(cfg.data, cfg.train.seed).train)
    run_dir = tmp_path / "run"
    p = launch("reviveformer", _args(RECIPE, run_dir, corpus_file, **{"train.batch_size": blocks}), 2)
    assert p.returncode != 0
    assert "give each process no whole batch" in p.stderr
    assert not run_dir.exists()


def test_a_run_ended_by_max_steps_logs_the_measurement_of_final(tmp_path, corpus_file):
    """Step 7 of a 12-step epoch: the last logged val/loss and dead ratio are those of final/'s weights."""
    run_dir = tmp_path / "run"
    assert main(_args(RECIPE, run_dir, corpus_file, **{"train.max_steps": 7, "model.dropout": 0.0})) == 0
    rows = [r for r in _metrics(run_dir) if r["step"] == 7 and "val/loss" in r]
    assert len(rows) == 1 and "liveness/mlp_post/dead_ratio" in rows[0]
    cfg = load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **SHORT))
    val = prepare_data(cfg.data, cfg.train.seed).val[:]["input_ids"]
    assert rows[0]["val/loss"] == pytest.approx(_token_mean_loss(run_dir / "final", val), rel=1e-6)
    final = json.loads((run_dir / "liveness" / "final.json").read_text())
    units = sum(layer["units"] for layer in final["sites"]["mlp_post"])
    dead = sum(len(layer["dead_units"]) for layer in final["sites"]["mlp_post"])
    assert rows[0]["liveness/mlp_post/dead_ratio"] == pytest.approx(dead / units)
    status = read_status(run_dir)
    assert (status.state, status.step, status.epoch, status.reason, status.final_step) == (
        "finished",
        7,
        0,
        None,
        7,
    )


def test_the_last_revival_is_measured_before_it_is_reported(tmp_path, corpus_file):
    """Stripping at the last epoch end changes the weights after that epoch end's measurement: the final
    val/loss logged (and summarised) is that of final/, measured again after the revival."""
    run_dir = tmp_path / "run"
    extra = {"train.epochs": 1, "model.dropout": 0.0, "revival.synaptic_stripping.fraction": 0.5}
    assert main(_args(STRIPPING, run_dir, corpus_file, **extra)) == 0
    rows = [r for r in _metrics(run_dir) if "val/loss" in r]
    assert [r["step"] for r in rows] == [12, 12]  # the epoch end's, then final/'s after the revival
    assert any("revival/count" in r for r in _metrics(run_dir))
    cfg = load_config(STRIPPING, tiny_overrides(run_dir, corpus_file, **SHORT))
    val = prepare_data(cfg.data, cfg.train.seed).val[:]["input_ids"]
    by_hand = _token_mean_loss(run_dir / "final", val)
    assert rows[-1]["val/loss"] == pytest.approx(by_hand, rel=1e-6)
    assert rows[0]["val/loss"] != pytest.approx(by_hand, rel=1e-6)  # the revival did change the model


def test_an_alert_stop_exits_4_is_recorded_and_announced_on_resume(tmp_path, corpus_file, capsys, caplog):
    run_dir = tmp_path / "run"
    stop = "[{name: any_dead, site: mlp_post, above: 0.0, action: stop}]"
    assert main(_args(RECIPE, run_dir, corpus_file, **{"alerts.rules": stop})) == 4
    status = read_status(run_dir)
    assert status.state == "stopped" and status.reason == "alert action stop"
    # the first train log at which a layer of mlp_post has a dead unit, read from the run's own metrics
    first = min(
        r["step"]
        for r in _metrics(run_dir)
        if any(
            k.startswith("liveness/mlp_post/layer_") and k.endswith("/dead_ratio") and v > 0
            for k, v in r.items()
        )
    )
    # a train log's window is read later (one window late): its stop acts at the next train log or epoch end
    stopped = min(
        r["step"] for r in _metrics(run_dir) if r["step"] > first and ("train/loss" in r or "epoch" in r)
    )
    assert status.step == status.final_step == stopped and first % 5 == 0
    state = ckpt.read_state(ckpt.find_resume_point(run_dir / "checkpoints"))
    assert (state["step"], state["stopped_by"]) == (stopped, "alert action stop")
    with caplog.at_level("WARNING", logger="reviveformer"):
        main(_args(RECIPE, run_dir, corpus_file, **{"alerts.rules": stop, "train.resume": "auto"}))
    assert f"this run was stopped at step {stopped} (alert action stop); resuming trains on" in caplog.text


def test_a_second_ctrl_c_is_recorded_as_interrupted(tmp_path, corpus_file, monkeypatch, capsys):
    """The second Ctrl-C stops a run at once (KeyboardInterrupt, exit 130, no checkpoint of that moment):
    status.json then says "interrupted", not "running" as it once did. The moment is placed by hand: the
    interrupt is raised where the fault hook's `mid_step` is, in step 3."""
    import reviveformer.trainer as trainer_module

    real = trainer_module.fault_point
    arrivals = []

    def second_ctrl_c(phase: str) -> None:
        real(phase)
        if phase == "mid_step":
            arrivals.append(phase)
            if len(arrivals) == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "fault_point", second_ctrl_c)
    run_dir = tmp_path / "run"
    assert main(_args(RECIPE, run_dir, corpus_file)) == 130
    assert "interrupted" in capsys.readouterr().err
    status = read_status(run_dir)
    assert status.state == "interrupted" and status.step == 2  # two steps done, the third cut off
    assert not (run_dir / "final").exists()


# ------------------------------------------------------------------------------------------- stops outside the loop


@pytest.mark.parametrize(
    ("signal_name", "status", "state"), [("SIGTERM", 75, "preempted"), ("SIGINT", 130, "interrupted")]
)
def test_a_stop_signal_during_set_up_ends_the_run_at_once(
    tmp_path, corpus_file, monkeypatch, capsys, signal_name, status, state
):
    """Issue 27: a signal during set-up (data prepared, model built, before the folder is written) was only a
    request read at the first train log, and before the handler was installed nothing heard it. Now the run
    stops there: its exit status, one line, status.json at step 0, nothing of the run written, the signals'
    handlers as they were."""
    import signal

    from reviveformer import faults

    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv(faults.ENV, f"setup:1:{signal_name}")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    run_dir = tmp_path / "run"
    assert main(_args(RECIPE, run_dir, corpus_file)) == status
    err = capsys.readouterr().err
    assert f"reviveformer train: stopped: {signal_name} during set-up" in err and "Traceback" not in err
    got = read_status(run_dir)
    assert (got.state, got.step, got.final_step) == (state, 0, None)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",
        "status.json",
    ]  # no config.yaml: a rerun starts
    assert RunLock(run_dir).try_acquire() is None
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_a_full_disk_is_one_message_and_the_last_checkpoint_stays(tmp_path, corpus_file, monkeypatch, capsys):
    """Issue 27: a full disk while the step-10 checkpoint is written ended in a chained traceback, exit 1, and
    status.json still saying "running". Now: exit 74, one message naming the folder and the intact step-5
    checkpoint, status.json `no_space` at step 10, no half-written checkpoint left; the resume finishes."""
    from reviveformer import faults

    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv(faults.ENV, "checkpoint_write:2:ENOSPC")
    run_dir = tmp_path / "run"
    steps = {"train.max_steps": 10, "train.checkpoint_every": 5, "train.epochs": 1, "model.dropout": 0.0}
    assert main(_args(RECIPE, run_dir, corpus_file, **steps)) == 74
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        f"reviveformer train: error: no space left on the device holding {run_dir}; the checkpoint at step 5 is "
        "intact; free space and resume with train.resume=auto\n"
    ) in err
    got = read_status(run_dir)
    assert (got.state, got.step) == ("no_space", 10) and "no space left" in got.reason
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000005"]
    assert ckpt.checked_damage(checkpoints / "step_00000005", afresh=True) is None
    monkeypatch.setenv(faults.ENV, "")
    assert main(_args(RECIPE, run_dir, corpus_file, **steps, **{"train.resume": "auto"})) == 0
    assert read_status(run_dir).state == "finished"


def test_a_resume_stopped_during_set_up_keeps_the_step_its_folder_recorded(tmp_path):
    """A resume stopped before its checkpoint was read (its position still step 0) says it stopped at the step
    the folder last recorded, not at 0; before the lock is held it writes nothing (the folder may be another
    run's)."""
    from types import SimpleNamespace

    from reviveformer.errors import StoppedInSetup
    from reviveformer.loop import Position, RunControl
    from reviveformer.run_status import write_status

    write_status(tmp_path, "preempted", 20, 1, "SIGTERM at step 20", final_step=None)
    control = RunControl(tmp_path, SimpleNamespace(is_main_process=True, num_processes=1))
    control.ended_by(StoppedInSetup("SIGINT"), Position())
    assert read_status(tmp_path).state == "preempted"  # not holding the folder: unchanged
    control.holds_folder = True
    control.ended_by(StoppedInSetup("SIGINT"), Position())
    got = read_status(tmp_path)
    assert (got.state, got.step, got.epoch) == ("interrupted", 20, 1) and "during set-up" in got.reason


def test_the_train_command_stops_at_once_while_it_imports(monkeypatch):
    """Before the trainer's set-up (torch imported, the recipe read) a stop signal raises StoppedInSetup, which
    the command line turns into 75 (SIGTERM) or 130 (SIGINT); the handlers are given back afterwards."""
    import os
    import signal

    from reviveformer.commands import train as train_command
    from reviveformer.errors import StoppedInSetup

    for sig, status in ((signal.SIGTERM, 75), (signal.SIGINT, 130)):
        previous = train_command._stop_at_once()
        try:
            with pytest.raises(StoppedInSetup) as stopped:
                os.kill(os.getpid(), sig)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        assert stopped.value.exit_status == status


def test_a_full_disk_is_told_from_its_error_or_from_the_free_space(tmp_path, monkeypatch):
    """The OS's ENOSPC/EDQUOT however it is wrapped (torch raises a RuntimeError from it; safetensors keeps only
    its words), or, for torch's writer that keeps neither, a device left (nearly) full; nothing else."""
    import errno

    from reviveformer import errors

    def wrapped(inner: BaseException) -> RuntimeError:
        try:
            raise inner
        except BaseException as e:
            try:
                raise RuntimeError("file write failed") from e
            except RuntimeError as outer:
                return outer

    assert errors.disk_full(wrapped(OSError(errno.ENOSPC, "No space left on device")), tmp_path).errno == 28
    assert errors.disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path).errno == errno.EDQUOT
    said = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert errors.disk_full(said, tmp_path).errno == errno.ENOSPC
    assert errors.disk_full(wrapped(ValueError("bad")), tmp_path) is None
    assert errors.disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path / "not" / "yet") is None
    monkeypatch.setattr(errors, "_free_bytes", lambda path: 4096)
    assert errors.disk_full(RuntimeError("unexpected pos 576 vs 534"), tmp_path).errno == errno.ENOSPC
