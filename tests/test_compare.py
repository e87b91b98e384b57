"""`compare`: the table's numbers match hand-written run directories, the outputs exist, bad input is a
UserError, W&B history converts to the same rows, and the CLI prints the table."""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import types
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from reviveformer import compare
from reviveformer.cli import main
from reviveformer.errors import UserError
from reviveformer.run_status import write_status

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def config(method: str, activation: str | None, job_type: str | None = None) -> dict:
    return {
        "model": {"n_layer": 2, "n_embd": 4, "activation": activation, "init_from": None},
        "data": {"source": "text"},
        "train": {"epochs": 2},
        "liveness": {"enabled": True},
        "alerts": {"rules": []},
        "revival": {"method": method, "fraction": 0.05},
        "wandb": {"mode": "disabled", "group": "g", "job_type": job_type},
    }


def liveness(dead: dict[str, list[list[int]]], units: int = 10, capacity: dict | None = None) -> dict:
    """A liveness.json with `units` units per layer and the given dead unit indices per site and layer."""
    sites = {
        site: [
            {
                "layer": i,
                "units": units,
                "fire_count": [0] * units,
                "frequency": [0.0] * units,
                "dead_ratio": len(d) / units,
                "dead_units": d,
                "dormant_ratio": 0.0,
            }
            for i, d in enumerate(layers)
        ]
        for site, layers in dead.items()
    }
    return {
        "tokens": 1000,
        "threshold": 1e-3,
        "criterion": "abs",
        "dead_frequency": 1e-3,
        "tau": 0.1,
        "sites": sites,
        "capacity": capacity or {},
    }


def write_run(path: Path, cfg: dict, rows: list[dict], epochs: list[dict] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # json.dumps writes NaN as the trainer's json.dumps would, so the reader must skip it.
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i, data in enumerate(epochs or []):
        (path / "liveness").mkdir(exist_ok=True)
        (path / "liveness" / f"epoch_{i:03d}.json").write_text(json.dumps(data))
    # Each of these runs reached its planned end (the tables below count them as complete).
    write_status(path, "finished", max((r["step"] for r in rows), default=0), len(epochs or []))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "runs"
    baseline = write_run(
        root / "baseline",
        config("none", "relu"),
        [
            {"step": 10, "train/loss": 5.0, "train/tokens_per_s": 100.0},
            {
                "step": 20,
                "train/loss": 4.5,
                "train/tokens_per_s": 300.0,
                "liveness/mlp_post/dead_ratio": 0.3,
                "liveness/mlp_post/layer_0/dead_ratio": 0.2,
                "liveness/mlp_post/layer_1/dead_ratio": 0.4,
            },
            {"step": 20, "val/loss": 4.0, "val/ppl": math.exp(4.0), "epoch": 0},
            {"step": 30, "train/tokens_per_s": 200.0},
            {"step": 40, "val/loss": 3.5, "epoch": 1},
            {"step": 50, "val/loss": 3.7},  # final, worse than the best
        ],
        epochs=[
            liveness({"mlp_pre": [[], []], "mlp_post": [[0], [1]]}),
            # The last epoch is what counts: mlp_pre 4/20 dead, mlp_post 7/20 dead.
            liveness(
                {"mlp_pre": [[1], [1, 2, 3]], "mlp_post": [[0, 1], [2, 3, 4, 5, 6]]},
                capacity={
                    "alive_units": 13,
                    "alive_fraction": 0.65,
                    "effective_params": 1000,
                    "effective_param_fraction": 0.8,
                },
            ),
        ],
    )
    stripping = write_run(
        root / "stripping",
        config("synaptic_stripping", "relu"),
        [
            {"step": 10, "train/tokens_per_s": 120.0},
            {"step": 20, "train/tokens_per_s": 80.0, "liveness/mlp_post/dead_ratio": 0.5},
            {"step": 20, "val/loss": 4.2},
            {
                "step": 20,
                "revival/revived_units": 0,
                "revival/pruned_total": 12,
                "revival/dead_units": 7,
                "capacity/effective_params": 990,
                "capacity/alive_fraction": 0.6,
                "capacity/effective_param_fraction": 0.79,
            },
            {"step": 40, "val/loss": 3.4},
            {
                "step": 40,
                "revival/revived_units": 3,
                "revival/pruned_total": 20,
                "revival/layer_0/revived_units": 3,
                "capacity/effective_params": 980,
                "capacity/alive_fraction": 0.7,
            },
            # A resumed run re-logs the steps after its last checkpoint: the revival at 40 counts once.
            {"step": 40, "revival/revived_units": 3, "revival/pruned_total": 20},
            {"step": 50, "val/loss": NAN},  # non-finite: left out
            {"step": 60, "val/loss": 3.3},
            {
                "step": 60,
                "revival/revived_units": 2,
                "revival/pruned_total": 25,
                "capacity/effective_params": 975,
                "capacity/alive_fraction": 0.75,
                "capacity/effective_param_fraction": 0.78,
            },
        ],
        epochs=[
            liveness(
                {"mlp_post": [[0, 1, 2], [3]]},
                # Written before the revival at that step: the capacity metrics override it.
                capacity={
                    "alive_units": 16,
                    "alive_fraction": 0.8,
                    "effective_params": 1000,
                    "effective_param_fraction": 0.8,
                },
            ),
        ],
    )
    redo = write_run(
        root / "redo",
        config("redo", None, job_type="my-arm"),
        [
            {
                "step": 5,
                "liveness/mlp_post/dead_ratio": 0.25,
                "liveness/mlp_post/layer_0/dead_ratio": 0.5,
                "liveness/mlp_post/layer_1/dead_ratio": 0.0,
            },
            {
                "step": 10,
                "liveness/mlp_post/dead_ratio": 0.125,
                "liveness/mlp_post/layer_0/dead_ratio": 0.25,
                "liveness/mlp_post/layer_1/dead_ratio": 0.0,
            },
            {"step": 10, "val/loss": 5.5},
        ],
    )
    return {"baseline": baseline, "stripping": stripping, "redo": redo}


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01  # something was drawn


def test_summary_numbers(runs: dict[str, Path]) -> None:
    data = compare.load_runs(list(runs.values()))
    rows = {r["run"]: r for r in compare.summarise_all(data)}

    b = rows["baseline"]
    assert b["arm"] == "baseline" and b["activation"] == "relu"
    assert b["final_val_loss"] == 3.7 and b["best_val_loss"] == 3.5
    assert b["dead_ratio/mlp_pre"] == pytest.approx(4 / 20)
    assert b["dead_ratio/mlp_post"] == pytest.approx(7 / 20)  # the last epoch's file, not the 0.3 metric
    assert (b["alive_fraction"], b["effective_params"], b["effective_param_fraction"]) == (0.65, 1000, 0.8)
    assert b["revived_units"] is None and b["pruned_weights"] is None
    assert b["tokens_per_s"] == 200.0  # median of 100, 300, 200

    s = rows["stripping"]
    assert s["arm"] == "stripping"
    assert s["final_val_loss"] == 3.3 and s["best_val_loss"] == 3.3
    assert s["dead_ratio/mlp_pre"] is None
    assert s["dead_ratio/mlp_post"] == pytest.approx(4 / 20)
    assert s["revived_units"] == 0 + 3 + 2
    assert s["pruned_weights"] == 25
    assert (s["alive_fraction"], s["effective_params"], s["effective_param_fraction"]) == (0.75, 975, 0.78)
    assert s["tokens_per_s"] == 100.0  # median of 120, 80

    r = rows["redo"]
    assert r["arm"] == "my-arm"  # wandb.job_type wins over revival.method
    assert r["activation"] == "gelu_new"  # unset on a new model: GPT-2's own
    assert r["final_val_loss"] == r["best_val_loss"] == 5.5
    assert r["dead_ratio/mlp_post"] == 0.125  # no liveness file: the last logged metric
    for key in ("alive_fraction", "effective_params", "revived_units", "pruned_weights", "tokens_per_s"):
        assert r[key] is None
    # Without a liveness file, per-layer ratios at the end come from the last row that logged them.
    assert data[2].liveness == {
        "sites": {"mlp_post": [{"layer": 0, "dead_ratio": 0.25}, {"layer": 1, "dead_ratio": 0.0}]}
    }


def test_rendered_tables(runs: dict[str, Path]) -> None:
    rows = compare.summarise_all(compare.load_runs(list(runs.values())))
    md = compare.render_markdown(rows).splitlines()
    assert md[0] == (
        "| run | status | complete | arm | activation | final val loss | best val loss | dead mlp_pre | dead mlp_post | "
        "alive MLP | effective params | effective % | units revived | weights pruned | tokens/s |"
    )
    assert md[1] == "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert (
        md[2]
        == "| baseline | finished | yes | baseline | relu | 3.7000 | 3.5000 | 20.0% | 35.0% | 65.0% | 1,000 | 80.0% | - | - | 200 |"
    )
    assert (
        md[3]
        == "| stripping | finished | yes | stripping | relu | 3.3000 | 3.3000 | - | 20.0% | 75.0% | 975 | 78.0% | 5 | 25 | 100 |"
    )
    assert (
        md[4]
        == "| redo | finished | yes | my-arm | gelu_new | 5.5000 | 5.5000 | - | 12.5% | - | - | - | - | - | - |"
    )

    text = compare.render_text(rows).splitlines()
    assert len(text) == 2 + 3
    assert text[0].split()[:5] == ["run", "status", "complete", "arm", "activation"]
    assert text[2].split() == [
        "baseline",
        "finished",
        "yes",
        "baseline",
        "relu",
        "3.7000",
        "3.5000",
        "20.0%",
        "35.0%",
        "65.0%",
        "1,000",
        "80.0%",
        "-",
        "-",
        "200",
    ]
    # Aligned: every header starts where its column's cells start or end.
    assert len({len(line) for line in text[:2]}) == 1


def test_compare_runs_writes_outputs(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare.compare_runs([str(p) for p in runs.values()], out)
    assert result["markdown"] == out / "compare.md" and result["json"] == out / "compare.json"

    rows = json.loads((out / "compare.json").read_text())
    assert rows == json.loads(json.dumps(result["rows"]))
    assert [r["run"] for r in rows] == ["baseline", "stripping", "redo"]
    assert rows[1]["revived_units"] == 5 and rows[2]["tokens_per_s"] is None

    names = {p.name for p in result["figures"].values()}
    # mlp_pre has no per-step metric in any run, so only its end-of-run per-layer figure exists.
    assert names == {
        "val_loss.png",
        "dead_ratio_over_training_mlp_post.png",
        "dead_ratio_per_layer_mlp_pre.png",
        "dead_ratio_per_layer_mlp_post.png",
    }
    for path in result["figures"].values():
        assert path.parent == out
        assert_png(path)

    md = (out / "compare.md").read_text()
    assert compare.render_markdown(result["rows"]) in md
    for name in names:
        assert f"]({name})" in md  # linked relative to compare.md


def test_same_directory_names_get_unique_labels(runs: dict[str, Path], tmp_path: Path) -> None:
    a = write_run(tmp_path / "a" / "run", config("none", "relu"), [{"step": 1, "val/loss": 2.0}])
    b = write_run(tmp_path / "b" / "run", config("none", "gelu"), [{"step": 1, "val/loss": 3.0}])
    assert [r.name for r in compare.load_runs([a, b])] == ["a/run", "b/run"]
    assert compare.unique_names([a, a, b]) == ["a/run#1", "a/run#2", "b/run"]
    # but the same directory twice is not two runs: refused, named, whatever the spelling of its path
    with pytest.raises(UserError, match=re.escape(f"run directory {a.resolve()} is given twice")):
        compare.load_runs([a, b, a / ".." / "run"])
    assert compare.unique_names([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_bad_directories_raise_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="nope.*no such directory.*metrics.jsonl and config.yaml"):
        compare.load_run(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty.*no metrics\.jsonl and no config\.yaml.*reviveformer train"):
        compare.load_run(empty)
    half = tmp_path / "half"
    half.mkdir()
    (half / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match=r"half.*no config\.yaml"):
        compare.load_run(half)
    with pytest.raises(UserError, match="no run directories"):
        compare.load_runs([])


# ---------------------------------------------------------------------------------------------- W&B

HISTORY = [
    {
        "_step": 0,
        "_runtime": 1.5,
        "_timestamp": 1.7e9,
        "train/loss": 5.0,
        "val/loss": None,
        "train/tokens_per_s": 100.0,
    },
    {
        "_step": 10,
        "val/loss": 4.0,
        "train/loss": NAN,
        "liveness/mlp_post/dead_ratio": 0.375,
        "liveness/mlp_post/layer_0/dead_ratio": 0.5,
        "liveness/mlp_post/layer_1/dead_ratio": 0.25,
    },
    {
        "_step": 20,
        "val/loss": 3.5,
        "revival/revived_units": 2,
        "revival/pruned_total": 7,
        "liveness/mlp_post/layer_0/dead_ratio": None,
        "liveness/mlp_post/activations": {"_type": "histogram"},
        "capacity/effective_params": 900,
        "train/tokens_per_s": 300.0,
    },
    {
        "_step": 30,
        "val/loss": NAN,
        "liveness/mlp_post/dead_ratio": 0.2,
        "liveness/mlp_post/layer_0/dead_ratio": 0.1,
        "liveness/mlp_post/layer_1/dead_ratio": 0.3,
        "revival/revived_units": 1,
        "revival/pruned_total": 9,
        "train/tokens_per_s": 200.0,
    },
]
WANDB_CONFIG = {
    "model": {"activation": "silu"},
    "revival": {"method": "synaptic_stripping"},
    "wandb": {"job_type": None, "group": "g"},
}


def test_rows_from_wandb_history() -> None:
    [run, other, again] = compare.rows_from_wandb_history(
        [
            ("arm-a", WANDB_CONFIG, HISTORY),
            ("arm-b", {"revival": {"method": "none"}}, []),
            ("arm-a", WANDB_CONFIG, HISTORY[:1]),
        ]
    )
    assert (run.name, other.name, again.name) == ("arm-a#1", "arm-b", "arm-a#2")
    assert run.metrics == [
        {"step": 0, "train/loss": 5.0, "train/tokens_per_s": 100.0},
        {
            "step": 10,
            "val/loss": 4.0,
            "liveness/mlp_post/dead_ratio": 0.375,
            "liveness/mlp_post/layer_0/dead_ratio": 0.5,
            "liveness/mlp_post/layer_1/dead_ratio": 0.25,
        },
        {
            "step": 20,
            "val/loss": 3.5,
            "revival/revived_units": 2,
            "revival/pruned_total": 7,
            "capacity/effective_params": 900,
            "train/tokens_per_s": 300.0,
        },
        {
            "step": 30,
            "liveness/mlp_post/dead_ratio": 0.2,
            "liveness/mlp_post/layer_0/dead_ratio": 0.1,
            "liveness/mlp_post/layer_1/dead_ratio": 0.3,
            "revival/revived_units": 1,
            "revival/pruned_total": 9,
            "train/tokens_per_s": 200.0,
        },
    ]
    assert run.liveness == {
        "sites": {"mlp_post": [{"layer": 0, "dead_ratio": 0.1}, {"layer": 1, "dead_ratio": 0.3}]}
    }

    row = compare.summarise(run)
    assert row == {
        "run": "arm-a#1",
        "status": "unknown (W&B)",  # W&B does not hold status.json: not known (counted over seeds)
        "complete": None,
        "arm": "stripping",
        "activation": "silu",
        "final_val_loss": 3.5,
        "best_val_loss": 3.5,
        "dead_ratio/mlp_post": 0.2,
        "alive_fraction": None,
        "effective_params": 900,
        "effective_param_fraction": None,
        "revived_units": 3,
        "pruned_weights": 9,
        "tokens_per_s": 200.0,
    }
    empty = compare.summarise(other)
    assert empty["arm"] == "baseline" and empty["final_val_loss"] is None
    assert "| arm-b | unknown (W&B) | - | baseline | gelu_new | - | - |" in compare.render_markdown([empty])
    # a run's name is the user's text: the Markdown shows it as written, never as HTML (the pages escape it too)
    empty["run"] = "<img src=x onerror=alert(1)> a|b & c"
    md = compare.render_markdown([empty])
    assert "| \\<img src=x onerror=alert(1)\\> a\\|b & c | unknown (W&B) |" in md


class FakeRun:
    def __init__(self, name: str, job_type: str | None, history: list[dict]):
        self.name, self.id, self.job_type, self._history = name, f"id-{name}", job_type, history
        self.config = {
            "model": {"activation": "relu"},
            "revival": {"method": "none"},
            "wandb": {"job_type": None},
        }

    def scan_history(self):
        return iter(self._history)


def fake_wandb(monkeypatch: pytest.MonkeyPatch, runs: list[FakeRun] | Exception) -> list[tuple]:
    calls: list[tuple] = []

    class Api:
        def __init__(self):
            if isinstance(runs, Exception):
                raise runs

        def runs(self, path, filters=None):
            calls.append((path, filters))
            return runs

    import reviveformer.tracking  # noqa: F401  (imported before the fake module replaces wandb)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    return calls


def test_fetch_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_wandb(
        monkeypatch, [FakeRun("base", "baseline", HISTORY), FakeRun("sweep-relu", "sweep", [])]
    )
    runs = compare.fetch_wandb("team/proj", "g1")
    assert calls == [("team/proj", {"group": "g1"})]
    assert [r.name for r in runs] == ["base", "sweep-relu"]
    assert [compare.arm_of(r.config) for r in runs] == ["baseline", "sweep"]  # W&B's job_type fills the arm
    assert runs[0].source == "wandb:team/proj/id-base"
    assert compare.summarise(runs[0])["revived_units"] == 3


def test_fetch_wandb_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_wandb(monkeypatch, RuntimeError("api_key not configured (no-tty)"))
    with pytest.raises(UserError, match=r"api_key not configured.*wandb login.*WANDB_API_KEY"):
        compare.fetch_wandb("team/proj", "g1")
    fake_wandb(monkeypatch, [])
    with pytest.raises(UserError, match="no runs in group 'g1'"):
        compare.fetch_wandb("team/proj", "g1")
    with pytest.raises(UserError, match="ENTITY/PROJECT"):
        compare.fetch_wandb("proj", "g1")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_compare(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs["baseline"]), str(runs["stripping"])]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:7] == ["run", "status", "complete", "arm", "activation", "final", "val"]
    assert lines[2].split()[:7] == ["baseline", "finished", "yes", "baseline", "relu", "3.7000", "3.5000"]
    default_out = runs["baseline"].parent / "compare"  # beside the first run directory
    assert f"table: {default_out / 'compare.md'}" in out
    assert_png(default_out / "val_loss.png")
    assert str(default_out / "val_loss.png") in out


def test_cli_compare_out_and_wandb(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_wandb(monkeypatch, [FakeRun("baseline", "baseline", HISTORY)])
    out = tmp_path / "both"
    assert (
        main(["compare", str(runs["stripping"]), "--wandb", "team/proj", "--group", "g", "--out", str(out)])
        == 0
    )
    rows = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["stripping", "baseline"]

    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--wandb", "team/proj", "--group", "g/1"]) == 0
    assert (tmp_path / "compare-g_1" / "compare.md").is_file()
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["does-not-exist"], "does-not-exist: no such directory"),
        ([], "nothing to compare"),
        (["--wandb", "team/proj"], "--wandb needs --group"),
        (["--group", "g"], "--group needs --wandb"),
    ],
)
def test_cli_compare_user_errors(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reviveformer compare: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "compare").exists()  # nothing half-written


# --- arms over seeds ------------------------------------------------------------------------------------------


def seeded_run(
    root: Path, name: str, method: str, activation: str, seed: int, final_loss: float, dead_units: list[int]
) -> Path:
    cfg = config(method, activation)
    cfg["train"] = {"epochs": 2, "seed": seed, "output_dir": str(root / name)}
    cfg["wandb"]["name"] = name  # differs per run, as a sweep names them: not a setting
    return write_run(
        root / name,
        cfg,
        [
            {"step": 10, "val/loss": final_loss + 1.0, "liveness/mlp_post/dead_ratio": 0.5},
            {"step": 20, "val/loss": final_loss, "liveness/mlp_post/dead_ratio": len(dead_units) / 20},
        ],
        epochs=[liveness({"mlp_post": [dead_units, []]})],
    )


@pytest.fixture
def seeded(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    # baseline and redo have equal sample sds (0.02), so Welch's df is exactly 2 (n - 1) = 4
    return [
        seeded_run(root, "base-s0", "none", "relu", 0, 4.10, [0, 1]),
        seeded_run(root, "base-s1", "none", "relu", 1, 4.12, [0, 1, 2, 3]),
        seeded_run(root, "base-s2", "none", "relu", 2, 4.08, [0, 1, 2]),
        seeded_run(root, "redo-s0", "redo", "relu", 0, 4.00, [0]),
        seeded_run(root, "redo-s1", "redo", "relu", 1, 4.02, []),
        seeded_run(root, "redo-s2", "redo", "relu", 2, 3.98, [0]),
        seeded_run(root, "gelu-s0", "none", "gelu", 0, 4.50, []),
    ]


def test_seed_groups_mean_sd_and_welch_interval(seeded: list[Path], tmp_path: Path, capsys) -> None:
    import statistics

    out = tmp_path / "cmp"
    assert main(["compare", *map(str, seeded), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "seeds.json").read_text())
    groups = {g["arm"]: g for g in result["groups"]}
    # the two arms labelled baseline are told apart by the setting that differs
    assert list(groups) == ["baseline (activation=relu)", "redo", "baseline (activation=gelu)"]
    base = groups["baseline (activation=relu)"]
    assert base["n"] == 3 and base["seeds"] == [0, 1, 2]
    assert base["final_val_loss"]["mean"] == pytest.approx(statistics.mean([4.10, 4.12, 4.08]))
    assert base["final_val_loss"]["sd"] == pytest.approx(statistics.stdev([4.10, 4.12, 4.08]))
    assert base["dead_ratio/mlp_post"]["mean"] == pytest.approx(statistics.mean([2 / 20, 4 / 20, 3 / 20]))
    assert base["dead_ratio/mlp_post"]["sd"] == pytest.approx(statistics.stdev([2 / 20, 4 / 20, 3 / 20]))
    assert groups["baseline (activation=gelu)"]["final_val_loss"] == {"mean": 4.50, "sd": None, "n": 1}

    # no arm is labelled exactly "baseline", so the first arm is the reference; --baseline picks another
    assert result["reference"] == "baseline (activation=relu)"
    redo = next(d for d in result["differences"] if d["arm"] == "redo")
    se = math.sqrt(0.02**2 / 3 + 0.02**2 / 3)
    t = 2.776445105  # Student t, 97.5% quantile, 4 degrees of freedom (printed tables)
    assert redo["diff"] == pytest.approx(-0.10) and redo["df"] == pytest.approx(4.0)
    assert (redo["low"], redo["high"]) == (pytest.approx(-0.10 - t * se), pytest.approx(-0.10 + t * se))
    assert "Welch" in redo["method"]
    # paired by seed: redo - baseline is -0.10 at each of the 3 seeds, so the paired interval has no width
    assert redo["paired_n"] == 3 and redo["paired_diff"] == pytest.approx(-0.10)
    assert (redo["paired_low"], redo["paired_high"]) == (pytest.approx(-0.10), pytest.approx(-0.10))
    gelu = next(d for d in result["differences"] if d["arm"].endswith("gelu)"))
    assert gelu["low"] is None and gelu["diff"] == pytest.approx(4.50 - 4.10)  # one seed: no interval
    assert gelu["paired_n"] == 1 and gelu["paired_low"] is None  # one shared seed: no paired interval

    md = (out / "compare.md").read_text()
    assert "## Arms over seeds" in md and "4.1000 ± 0.0200" in md and "Welch" in md
    assert f"[{-0.10 - t * se:+.4f}, {-0.10 + t * se:+.4f}]" in md
    assert "4.1000 ± 0.0200" in printed and "Welch" in printed
    for name in ("val_loss_seeds.png", "dead_ratio_over_training_mlp_post_seeds.png"):
        assert_png(out / name)
        assert f"]({name})" in md

    # the report page carries the same: the seed table, the interval, and the band figures embedded
    page = (out / "compare.html").read_text()
    assert 'id="seeds"' in page and "4.1000 ± 0.0200" in page
    assert 'id="differences"' in page and f"[{-0.10 - t * se:+.4f}, {-0.10 + t * se:+.4f}]" in page
    for name in ("val_loss_seeds.png", "dead_ratio_over_training_mlp_post_seeds.png"):
        png = base64.b64encode((out / name).read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{png}" in page


def test_baseline_option(seeded: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, seeded), "--out", str(out), "--baseline", "redo"]) == 0
    result = json.loads((out / "seeds.json").read_text())
    assert result["reference"] == "redo"
    assert next(d for d in result["differences"] if d["arm"].endswith("relu)"))["diff"] == pytest.approx(0.10)
    bad = tmp_path / "bad"
    assert main(["compare", *map(str, seeded), "--out", str(bad), "--baseline", "nope"]) == 2
    assert "--baseline 'nope' is not one of the arms" in capsys.readouterr().err
    assert not bad.exists()


def test_seed_band_by_hand() -> None:
    from reviveformer.stats import seed_band

    a = [{"step": 10, "k": 1.0}, {"step": 20, "k": 2.0}]
    b = [{"step": 10, "k": 3.0}, {"step": 20, "k": 4.0}, {"step": 30, "k": 5.0}, {"step": 30, "other": 1}]
    band = seed_band([a, b], "k")
    assert band["step"].tolist() == [10, 20, 30] and band["n"].tolist() == [2, 2, 1]
    assert band["mean"].tolist() == [2.0, 3.0, 5.0]
    assert band["sd"][:2].tolist() == pytest.approx([math.sqrt(2)] * 2) and math.isnan(band["sd"][2])


def test_one_seed_per_arm_has_no_seed_section(runs: dict[str, Path], tmp_path: Path) -> None:
    result = compare.compare_runs([str(p) for p in runs.values()], tmp_path / "cmp")
    assert result["seeds"] is None and not (tmp_path / "cmp" / "seeds.json").exists()
