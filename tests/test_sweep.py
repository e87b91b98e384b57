"""`reviveformer sweep`: the grid's cells and run directories, bad grids refused before anything is written, a
killed sweep that continues where it stopped, and a sweep under `accelerate launch` with 2 processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, launch, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.errors import UserError
from reviveformer.run_status import write_status
from reviveformer.sweep import parse_grid, plan_runs

RECIPE = REPO / "recipes" / "quickstart.yaml"


def test_grid_expands_to_every_cell_and_seed(tmp_path):
    axes = parse_grid(["revival.method=none,redo", "train.lr=1e-3,3e-3"], "relu,gelu")
    assert axes == [
        ("revival.method", ["none", "redo"]),
        ("train.lr", ["1e-3", "3e-3"]),
        ("model.activation", ["relu", "gelu"]),
    ]
    plan = plan_runs(axes, [0, 1, 2], tmp_path, "g")
    assert len(plan) == 2 * 2 * 2 * 3
    cells = [
        f"method-{m}__lr-{lr}__activation-{a}"
        for m in ("none", "redo")
        for lr in ("1e-3", "3e-3")
        for a in ("relu", "gelu")
    ]
    assert [r.label for r in plan] == [f"{c}__seed-{s}" for c in cells for s in (0, 1, 2)]
    assert len({r.run_dir for r in plan}) == len(plan) and all(r.run_dir.parent == tmp_path for r in plan)
    r = plan[4]  # method none, lr 1e-3, gelu, seed 1
    assert r.cell == "method-none__lr-1e-3__activation-gelu" and r.seed == 1
    assert r.overrides == [
        "revival.method=none",
        "train.lr=1e-3",
        "model.activation=gelu",
        "train.seed=1",
        f"train.output_dir={tmp_path / r.label}",
        "wandb.group=g",
        f"wandb.name={tmp_path.name}-{r.label}",
        f"wandb.job_type={r.cell}",
    ]
    # keys that share a last part are named in full; no grid: one cell, runs named by seed alone
    assert (
        plan_runs([("model.n_layer", ["2"]), ("x.n_layer", ["3"])], [0], tmp_path, "g")[0].label
        == "model.n_layer-2__x.n_layer-3__seed-0"
    )
    assert [r.label for r in plan_runs([], [4, 5], tmp_path, "g")] == ["seed-4", "seed-5"]
    # a grid key whose last part is `seed` is named in full: `seed-0` alone reads as the training seed
    assert [r.label for r in plan_runs([("tasks.seed", ["0", "1"])], [7], tmp_path, "g")] == [
        "tasks.seed-0__seed-7",
        "tasks.seed-1__seed-7",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "model.activation"], "must look like section.key=V1,V2"),
        (["--grid", "train.seed=1,2"], "use --seeds"),
        (["--grid", "train.output_dir=a,b"], "sets train.output_dir itself"),
        (["--grid", "model.activation=relu,relu"], "lists a value twice"),
        (["--grid", "model.activation=relu", "--activations", "gelu"], "given twice"),
        (["--activations", "relu,nope"], "nope"),
        (["--grid", "model.activaton=relu,gelu"], "model.activaton"),
        (["--grid", "train.lr=-1,1"], "lr=-1"),
        (["--grid", "train.lr=1e-3", "--seeds", "0,x"], "--seeds"),
        (["--grid", "train.lr=1e-3", "liveness.enabled=false"], "liveness.enabled=true"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_is_written(tmp_path, corpus_file, capsys, argv, message):
    out = tmp_path / "sweep"
    assert (
        main(["sweep", str(RECIPE), "--out", str(out), *argv, *tiny_overrides(tmp_path / "x", corpus_file)])
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "x").exists()


def test_parse_grid_needs_values():
    with pytest.raises(UserError, match="at least one value"):
        parse_grid(["train.lr=,"], None)


def _snapshot(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_killed_sweep_continues_where_it_stopped(tmp_path, corpus_file, caplog):
    """A sweep is run whole, then one run is put back in the state a kill after its step-2 checkpoint would
    have left; the same command keeps the finished run untouched and resumes the other from step 2, ending
    with the weights the uninterrupted sweep had."""
    out = tmp_path / "sweep"
    args = [
        "sweep",
        str(RECIPE),
        "--grid",
        "model.activation=relu,gelu",
        "--seeds",
        "3",
        "--out",
        str(out),
        *tiny_overrides(
            tmp_path / "unused",
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 6,
                "train.epochs": 1,
                "train.checkpoint_every": 2,
                "train.checkpoint_limit": 10,
                "train.deterministic": True,
                "model.dropout": 0.1,
            },
        ),
    ]
    assert main(args) == 0
    done, killed = out / "activation-relu__seed-3", out / "activation-gelu__seed-3"
    assert load_config(killed / "config.yaml").train.seed == 3
    straight = load_file(killed / "final" / "model.safetensors")
    steps = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert steps[0] == "step_00000002" and len(steps) >= 2
    shutil.rmtree(killed / "final")
    for name in steps[1:]:
        shutil.rmtree(killed / "checkpoints" / name)
    for f in (killed / "liveness").glob("*.json"):
        f.unlink()
    rows = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= 3))
    before = _snapshot(done)

    with caplog.at_level("INFO", logger="reviveformer"):
        assert main(args) == 0
    assert _snapshot(done) == before
    assert f"resumed from {killed / 'checkpoints' / 'step_00000002'}" in caplog.text
    resumed = load_file(killed / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert json.loads((out / "sweep.json").read_text())["cells"] == {
        "activation-relu": ["activation-relu__seed-3"],
        "activation-gelu": ["activation-gelu__seed-3"],
    }


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, corpus_file, capsys):
    """`train.resume=auto` refuses a folder with a run and no checkpoint; the sweep owns its run folders, so it
    clears such a run and trains it again, to the weights it had."""
    out = tmp_path / "sweep"
    overrides = {"data.max_tokens": 32 * 8 * 6, "train.epochs": 1, "train.checkpoint_every": 0}
    args = ["sweep", str(RECIPE), "--seeds", "3", "--out", str(out)]
    args += tiny_overrides(tmp_path / "unused", corpus_file, **overrides)
    assert main(args) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("seed-")]
    straight = load_file(run / "final" / "model.safetensors")
    for sub in ("final", "checkpoints", "liveness"):
        shutil.rmtree(run / sub)
    write_status(run, "running", 2, 0)  # what a kill at step 2 leaves
    capsys.readouterr()
    assert main(args) == 0
    assert "has no complete checkpoint to resume from; starting that run again" in capsys.readouterr().out
    again = load_file(run / "final" / "model.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


@pytest.mark.slow
def test_a_finished_run_of_other_settings_is_not_taken(tmp_path, corpus_file, capsys):
    out = tmp_path / "sweep"
    common = [
        "--out",
        str(out),
        *tiny_overrides(tmp_path / "u", corpus_file, **{"data.max_tokens": 32 * 8 * 3, "train.epochs": 1}),
    ]
    assert main(["sweep", str(RECIPE), "--seeds", "0", *common]) == 0
    (out / "seed-0" / "config.yaml").write_text(
        (out / "seed-0" / "config.yaml").read_text().replace("seed: 0", "seed: 9")
    )
    before = _snapshot(out / "seed-0")
    assert main(["sweep", str(RECIPE), "--seeds", "0", *common]) == 2
    assert "train.seed=9" in capsys.readouterr().err
    assert _snapshot(out / "seed-0") == before


@pytest.mark.slow
def test_sweep_with_two_processes(tmp_path, corpus_file):
    out = tmp_path / "sweep"
    overrides = tiny_overrides(
        tmp_path / "u", corpus_file, **{"data.max_tokens": 32 * 16 * 4, "train.epochs": 1}
    )
    p = launch("reviveformer", ["sweep", str(RECIPE), "--seeds", "0,1", "--out", str(out), *overrides])
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((out / "sweep.json").read_text())
    assert list(result["runs"]) == ["seed-0", "seed-1"]
    finals = []
    for label in result["runs"]:
        run = out / label
        finals.append(load_file(run / "final" / "model.safetensors"))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "val/loss" in r] == [4]  # 4 steps of 2 x 8 sequences, logged once
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in finals[0])  # the seeds differ
    seeds = json.loads((out / "compare" / "seeds.json").read_text())  # the two seeds are one arm
    assert [(g["arm"], g["n"], g["seeds"]) for g in seeds["groups"]] == [("baseline", 2, [0, 1])]
    assert "arms over seeds" in p.stdout


@pytest.mark.slow
def test_sweep_without_liveness_is_refused_on_every_process(tmp_path, corpus_file):
    """Issue 9 item 15: refused at load, by both processes (neither waits for the other), nothing trained."""
    out = tmp_path / "sweep"
    overrides = [*tiny_overrides(tmp_path / "u", corpus_file), "liveness.enabled=false", "alerts.rules=[]"]
    p = launch("reviveformer", ["sweep", str(RECIPE), "--seeds", "0,1", "--out", str(out), *overrides])
    assert p.returncode != 0  # (no alert rules: they would be refused first, for needing liveness too)
    assert p.stderr.count("sweep needs liveness.enabled=true") == 2, p.stderr[-3000:]
    assert not out.exists() and not (tmp_path / "u").exists()


@pytest.mark.slow
def test_a_sweep_folder_refuses_a_sweep_of_other_settings(tmp_path, corpus_file, capsys):
    """sweep.json records what defines the sweep; a re-run with other overrides, seeds or grid is refused
    (exit 2, naming what differs and the folder) with nothing changed; the same command again continues, and so
    does one with more seeds (the earlier ones kept)."""
    out = tmp_path / "sweep"
    common = [
        "--out",
        str(out),
        *tiny_overrides(tmp_path / "u", corpus_file, **{"data.max_tokens": 32 * 8 * 3, "train.epochs": 1}),
    ]
    assert main(["sweep", str(RECIPE), "--seeds", "0", *common]) == 0
    definition = json.loads((out / "sweep.json").read_text())["definition"]
    assert definition["seeds"] == [0] and definition["grid"] == {}
    assert definition["overrides"] == common[2:]
    lr = load_config(RECIPE, common[2:]).train.lr
    assert definition["settings"]["train.lr"] == lr
    capsys.readouterr()
    before = _snapshot(out)
    for options, extra, says in [
        (["--seeds", "0"], ["train.lr=0.0123"], f"train.lr: {json.dumps(lr)} before, 0.0123 now"),
        (["--seeds", "0"], ["model.dropout=0.3"], "model.dropout: "),
        (["--seeds", "1"], [], "seeds: [0] before, [1] now"),
        (["--seeds", "0", "--grid", "model.activation=relu,gelu"], [], "grid: {} before"),
    ]:
        assert main(["sweep", str(RECIPE), *options, *common, *extra]) == 2, says
        err = capsys.readouterr().err
        assert f"{out} holds another sweep" in err and says in err and "Traceback" not in err, err
        assert _snapshot(out) == before
    assert main(["sweep", str(RECIPE), "--seeds", "0", *common]) == 0
    assert "sweep: seed-0 is finished; kept" in capsys.readouterr().out
    assert main(["sweep", str(RECIPE), "--seeds", "0,1", *common]) == 0
    assert "sweep: seed-0 is finished; kept" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["definition"]["seeds"] == [0, 1]
    assert (out / "seed-1" / "final").is_dir()
