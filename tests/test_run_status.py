"""Reports say only what happened: a run's status.json decides whether it finished and which step final/ is of;
compare keeps incomplete runs out of the seed statistics and refuses a run given twice; report says what
final/ holds; an output path blocked by a file is exit 2 with nothing written; reading a run folder never
imports the plug-in its config.yaml names.

Every run folder here is a copy of one real tiny run, with status.json written by hand (`write_status`) as the
trainer writes it."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.run_status import read_status, write_status
from reviveformer.sweep import PlannedRun, check_finished_run

RECIPE = REPO / "recipes" / "quickstart.yaml"
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file) -> tuple[Path, list[str]]:
    """A finished tiny run of 2 epochs (a validation loss at each epoch end) and the overrides it ran with."""
    from reviveformer.trainer import train

    run_dir = tmp_path_factory.mktemp("status") / "run"
    overrides = tiny_overrides(
        run_dir, corpus_file, **{"data.max_tokens": 32 * 8 * STEPS_PER_EPOCH, "train.epochs": 2}
    )
    train(load_config(RECIPE, overrides))
    return run_dir, overrides


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/loss) in the order logged, read straight from metrics.jsonl."""
    return [(r["step"], r["val/loss"]) for r in rows(run_dir) if "val/loss" in r]


def copy_run(src: Path, dst: Path, seed: int | None = None, method: str | None = None) -> Path:
    shutil.copytree(src, dst)
    (dst / "status.json").unlink(missing_ok=True)  # each test writes the status it is about
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    if seed is not None:
        cfg["train"]["seed"] = seed
    if method is not None:
        cfg["revival"]["method"] = method
        cfg["wandb"]["job_type"] = None  # the arm then comes from the method
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def halt_after_first_epoch(run_dir: Path) -> int:
    """Cut the run back to what a halt in its second epoch leaves: metrics up to the first epoch end, no final/
    and no second liveness file. Returns the step it halted at."""
    end = val_losses(run_dir)[0][0]
    kept = [r for r in rows(run_dir) if r["step"] <= end]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(run_dir / "final")
    for f in (run_dir / "liveness").glob("*epoch_001*"):
        f.unlink()
    return end


def test_write_status_keeps_the_last_final_step(trained, tmp_path):
    run = copy_run(trained[0], tmp_path / "run")
    assert read_status(run).state == "legacy" and read_status(run).complete  # no status.json, final/ there
    write_status(run, "finished", 6, 1, final_step=6)
    write_status(run, "running", 6, 1)  # a resumed session: final/ not written (yet) by it
    write_status(run, "preempted", 9, 2, reason="SIGTERM")
    assert json.loads((run / "status.json").read_text()) == {
        "state": "preempted",
        "step": 9,
        "epoch": 2,
        "reason": "SIGTERM",
        "final_step": 6,
    }
    assert not read_status(run).complete
    assert [p.name for p in run.iterdir() if p.name.startswith(".status")] == []  # no temporary file left


def test_compare_counts_a_copy_of_a_run_once_and_refuses_copies_that_disagree(
    trained, tmp_path, caplog, capsys
):
    """`cp -r A A2; cp -r B B2; compare A A2 B B2`: the copies are the same seeds again, not new ones (they once
    gave n=4 and a zero-width interval). Each is dropped with a warning naming it; a "copy" whose numbers differ
    (non-determinism, or an edited folder) is refused with exit 2, naming both runs."""
    src = trained[0]
    last = val_losses(src)[-1][0]
    a, b = copy_run(src, tmp_path / "A", seed=0), copy_run(src, tmp_path / "B", seed=1)
    for run in (a, b):
        write_status(run, "finished", last, 2, final_step=last)
    a2, b2 = copy_run(a, tmp_path / "A2"), copy_run(b, tmp_path / "B2")
    for run in (a2, b2):
        write_status(run, "finished", last, 2, final_step=last)
    out = tmp_path / "cmp"
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert main(["compare", str(a), str(a2), str(b), str(b2), "--out", str(out)]) == 0
    (arm,) = json.loads((out / "seeds.json").read_text())["groups"]
    assert arm["n"] == 2 and arm["seeds"] == [0, 1]
    warned = [r.getMessage() for r in caplog.records]
    assert "A2 is a copy of A (same settings, seed 0, same numbers): counted once" in warned
    assert "B2 is a copy of B (same settings, seed 1, same numbers): counted once" in warned
    assert len(json.loads((out / "compare.json").read_text())) == 4  # the table still shows every folder

    metrics = [json.loads(line) for line in (a2 / "metrics.jsonl").read_text().splitlines()]
    for r in metrics:
        if "val/loss" in r:
            r["val/loss"] += 0.5  # the same seed, other numbers
    (a2 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    err_out = tmp_path / "cmp2"
    capsys.readouterr()
    assert main(["compare", str(a), str(a2), str(b), "--out", str(err_out)]) == 2
    err = capsys.readouterr().err
    assert "A2 and A ran the same settings with seed 0 but end with other numbers (final_val_loss" in err
    assert "Traceback" not in err and not err_out.exists()


def test_compare_keeps_incomplete_runs_out_of_the_seed_statistics(trained, tmp_path, capsys):
    src = trained[0]
    s0 = copy_run(src, tmp_path / "s0", seed=0)
    s1 = copy_run(src, tmp_path / "s1", seed=1)
    s2 = copy_run(src, tmp_path / "s2", seed=2)
    last = val_losses(src)[-1][0]
    for run in (s0, s1):
        write_status(run, "finished", last, 2, final_step=last)
    halted_at = halt_after_first_epoch(s2)
    write_status(s2, "halted", halted_at + 1, 1, reason="non-finite loss")
    finished_loss, halted_loss = val_losses(src)[-1][1], val_losses(s2)[-1][1]
    assert finished_loss != halted_loss  # else the test could not tell the two apart

    out = tmp_path / "cmp"
    assert main(["compare", str(s0), str(s1), str(s2), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = {r["run"]: r for r in json.loads((out / "compare.json").read_text())}
    assert table["s2"]["complete"] is False and table["s2"]["status"] == f"halted at step {halted_at + 1}"
    assert table["s0"]["complete"] is True and table["s0"]["status"] == "finished"
    assert table["s2"]["final_val_loss"] == pytest.approx(halted_loss)  # shown as what it is
    seeds = json.loads((out / "seeds.json").read_text())
    (arm,) = seeds["groups"]
    assert arm["n"] == 2 and arm["seeds"] == [0, 1]
    assert arm["final_val_loss"]["mean"] == pytest.approx(finished_loss)
    assert seeds["incomplete"] == {"runs": ["s2"], "included": False}
    md = (out / "compare.md").read_text()
    assert f"| s2 | halted at step {halted_at + 1} | NO |" in md
    assert "**Incomplete runs** (complete: NO): s2" in md and "left out of the arms over seeds" in md
    assert "Incomplete runs (complete: NO): s2" in printed
    assert "left out of the arms over seeds" in (out / "compare.html").read_text()

    out2 = tmp_path / "cmp-all"
    assert main(["compare", str(s0), str(s1), str(s2), "--out", str(out2), "--include-incomplete"]) == 0
    (arm,) = json.loads((out2 / "seeds.json").read_text())["groups"]
    assert arm["n"] == 3
    assert arm["final_val_loss"]["mean"] == pytest.approx(
        statistics.mean([finished_loss] * 2 + [halted_loss])
    )


def test_compare_refuses_a_run_given_twice(trained, tmp_path, capsys, monkeypatch):
    s0 = copy_run(trained[0], tmp_path / "s0", seed=0)
    s1 = copy_run(trained[0], tmp_path / "s1", seed=1)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", str(s0), str(s1), "s0/", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run directory {s0.resolve()} is given twice" in err and "Traceback" not in err
    assert not out.exists()


def test_report_says_what_final_holds(trained, tmp_path, capsys):
    src = trained[0]
    last = max(r["step"] for r in rows(src))
    # A run resumed after its final/ was written at `last`, then killed 5 steps later: still "running".
    run = copy_run(src, tmp_path / "killed")
    write_status(run, "finished", last, 2, final_step=last)
    write_status(run, "running", last + 5, 2)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert f"final/ holds the weights of step {last}, not of step {last + 5}" in page
    assert "was running at its last status" in page and "finished" not in page.split("<h2>")[0]

    done = copy_run(src, tmp_path / "done")
    write_status(done, "finished", last, 2, final_step=last)
    assert main(["report", str(done)]) == 0
    page = (done / "report.html").read_text()
    assert f"finished: it reached its planned end; last status at step {last}, epoch 2" in page
    assert f"final/ holds its weights at step {last}" in page

    legacy = copy_run(src, tmp_path / "legacy")  # from before status files: final/ alone proves no step
    assert main(["report", str(legacy)]) == 0
    page = (legacy / "report.html").read_text()
    assert "not known whether it is of the last step" in page and "finished at step" not in page
    capsys.readouterr()


@pytest.mark.parametrize("command", ["compare", "report", "audit", "strip"])
def test_an_output_path_under_a_file_is_refused(trained, tmp_path, capsys, command):
    run = copy_run(trained[0], tmp_path / "run")
    blocker = tmp_path / "taken"
    blocker.write_text("a user's file\n")
    out = blocker / ("report.html" if command == "report" else "out")
    argv = {
        "compare": ["compare", str(run), "--out", str(out)],
        "report": ["report", str(run), "--out", str(out)],
        "audit": ["audit", str(run / "final"), "--out", str(out)],
        "strip": ["strip", str(run / "final"), "--out", str(out)],
    }[command]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {blocker} is a file" in err and "Traceback" not in err
    assert blocker.read_text() == "a user's file\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_compare_out_that_is_a_file_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained[0], tmp_path / "run")
    out = tmp_path / "cmp"
    out.write_text("mine\n")
    assert main(["compare", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {out} is a file" in err and "Traceback" not in err
    assert out.read_text() == "mine\n"


PAYLOAD = """from pathlib import Path

Path(__file__).resolve().parent.joinpath("PAYLOAD_RAN").write_text("imported")
"""


def test_reading_a_run_folder_never_imports_its_plugin(trained, tmp_path, monkeypatch, capsys):
    src, overrides = trained
    code = tmp_path / "code"
    code.mkdir()
    (code / "rf_payload_reviver.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(code))  # importable, as a module beside the run would be
    run = copy_run(src, tmp_path / "run", method="rf_payload_reviver:Revive")

    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    (row,) = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert row["arm"] == "Revive"  # the class name, read off the string
    # the sweep's check of a finished run reads the same config.yaml
    planned = PlannedRun(label="run", cell="", seed=load_config(RECIPE, overrides).train.seed, run_dir=run)
    check_finished_run(planned, load_config(RECIPE, overrides), ["train.seed", "model.activation"])
    assert not (code / "PAYLOAD_RAN").exists() and "rf_payload_reviver" not in sys.modules
    capsys.readouterr()
