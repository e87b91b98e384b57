"""Task sequences in compare and report: the last-half end-of-task losses, their paired differences to the
trains-on and fresh-start arms, the plasticity gap and the recovered fraction, all against numbers computed here
by hand from the run folders' own values; the plasticity figure; the run report's per-task figure."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_compare import assert_png, config, write_run

from reviveformer import compare, figures, metric_keys
from reviveformer.cli import main
from reviveformer.pages import run_report_html
from reviveformer.stats import paired_ratio_interval

ARMS = ("none", "fresh_start", "redo")
LABELS = {"none": "baseline", "fresh_start": "fresh_start", "redo": "redo"}
SEEDS = (0, 1, 2)
TASKS = 6
STEPS_PER_TASK = 40
# Student t, 97.5% quantile, 2 degrees of freedom (printed tables): 3 seeds paired.
T2 = 4.302652730


def train_losses() -> np.ndarray:
    """[arm, seed, task] end-of-task training loss: training on loses plasticity (its loss climbs task after
    task), a fresh start does not, ReDo climbs half as fast; each seed and task adds its own noise."""
    rng = np.random.default_rng(7)
    k = np.arange(TASKS)
    slope = {"none": 0.10, "fresh_start": 0.0, "redo": 0.05}
    seed_effect = np.array([0.00, 0.03, -0.02])
    return np.stack(
        [
            2.0 + slope[arm] * k[None, :] + seed_effect[:, None] + rng.normal(0, 0.01, (len(SEEDS), TASKS))
            for arm in ARMS
        ]
    )


TRAIN = train_losses()
# held-out loss: above the training loss by a per-arm margin, with noise of its own
VAL = (
    TRAIN
    + np.array([0.20, 0.15, 0.18])[:, None, None]
    + np.random.default_rng(8).normal(0, 0.01, TRAIN.shape)
)
DEAD = np.stack([np.linspace(0.0, d, TASKS)[None, :].repeat(3, 0) for d in (0.4, 0.02, 0.15)])


def task_run(root: Path, arm: str, seed: int) -> Path:
    """A run folder as a task-sequence run writes it: training log rows, and at each task's end one row with
    the task keys and the liveness ratios of that measurement, and liveness/task_XXX.json."""
    a = ARMS.index(arm)
    cfg = config(arm, "relu")
    cfg["train"] = {"epochs": 1, "seed": seed, "output_dir": str(root / f"{arm}-s{seed}")}
    cfg["wandb"]["name"] = f"{arm}-s{seed}"
    rows: list[dict] = []
    for k in range(TASKS):
        end = (k + 1) * STEPS_PER_TASK
        rows.append({"step": end - 20, "train/loss": TRAIN[a, seed, k] + 0.3, "train/tokens_per_s": 1000.0})
        task_end = {
            "step": end,
            metric_keys.TASK_INDEX: k,
            metric_keys.TASK_TRAIN_LOSS: TRAIN[a, seed, k],
            metric_keys.TASK_VAL_LOSS: VAL[a, seed, k],
            metric_keys.TASK_WEIGHT_NORM: 30.0 + k,
            "liveness/mlp_post/dead_ratio": DEAD[a, seed, k],
            "liveness/mlp_post/dormant_ratio": DEAD[a, seed, k] + 0.05,
        }
        if k == 2:
            # killed after task 2's end was logged, resumed from an earlier checkpoint: logged again, the last counts
            rows.append({**task_end, metric_keys.TASK_TRAIN_LOSS: 99.0, metric_keys.TASK_VAL_LOSS: 99.0})
        rows.append({"step": end, "train/loss": TRAIN[a, seed, k] + 0.1})
        rows.append(task_end)
    rows.append({"step": TASKS * STEPS_PER_TASK, "val/loss": VAL[a, seed, -1], "epoch": 0})
    path = write_run(root / f"{arm}-s{seed}", cfg, rows)
    (path / "liveness").mkdir()
    for k in range(TASKS):
        (path / "liveness" / f"task_{k:03d}.json").write_text(
            json.dumps({"sites": {"mlp_post": [{"layer": 0, "dead_ratio": float(DEAD[a, seed, k])}]}})
        )
    return path


@pytest.fixture
def task_runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    return [task_run(root, arm, seed) for arm in ARMS for seed in SEEDS]


def last_half(values: np.ndarray) -> np.ndarray:
    """[arm, seed] mean over tasks 3, 4, 5 of 6."""
    return values[:, :, TASKS // 2 :].mean(axis=2)


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = a - b
    half = T2 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def t_statistic(a: np.ndarray, b: np.ndarray, r: float) -> float:
    d = a - r * b
    return d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))


def test_plasticity_numbers_by_hand(task_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, task_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "plasticity.json").read_text())
    arms = {a["arm"]: a for a in result["arms"]}
    assert list(arms) == [LABELS[a] for a in ARMS]

    per_run = {r["run"]: r for r in json.loads((out / "compare.json").read_text())}
    m_train, m_val = last_half(TRAIN), last_half(VAL)
    for i, arm in enumerate(ARMS):
        row = per_run[f"{arm}-s1"]
        assert row["tasks"] == TASKS
        assert row["task_train_loss_last_half"] == pytest.approx(m_train[i, 1], abs=1e-12)
        assert row["task_val_loss_last_half"] == pytest.approx(m_val[i, 1], abs=1e-12)
        got = arms[LABELS[arm]]
        assert (
            got["method"] == arm and got["n"] == 3 and got["seeds"] == [0, 1, 2] and got["tasks"] == [TASKS]
        )
        for name, m in (("train", m_train), ("val", m_val)):
            assert got[name]["mean"] == pytest.approx(m[i].mean(), abs=1e-12)
            assert got[name]["sd"] == pytest.approx(m[i].std(ddof=1), rel=1e-9)

    none, fresh, redo = (ARMS.index(a) for a in ARMS)
    for name, m in (("train", m_train), ("val", m_val)):
        # the plasticity gap: trains on - fresh start, paired by seed
        (gap,) = result["gaps"]
        assert (gap["none"], gap["fresh_start"], gap[name]["n"]) == ("baseline", "fresh_start", 3)
        diff, low, high = paired(m[none], m[fresh])
        assert (gap[name]["diff"], gap[name]["low"], gap[name]["high"]) == (
            pytest.approx(diff, abs=1e-12),
            pytest.approx(low, abs=1e-9),
            pytest.approx(high, abs=1e-9),
        )
        assert low > 0  # these numbers lose plasticity, beyond the seeds' noise

        r = arms["redo"]
        diff, low, high = paired(m[redo], m[none])
        assert r["to_none"]["reference"] == "baseline"
        assert (r["to_none"][name]["diff"], r["to_none"][name]["low"], r["to_none"][name]["high"]) == (
            pytest.approx(diff, abs=1e-12),
            pytest.approx(low, abs=1e-9),
            pytest.approx(high, abs=1e-9),
        )
        diff, low, high = paired(m[redo], m[fresh])
        assert r["to_fresh_start"]["reference"] == "fresh_start"
        got = r["to_fresh_start"][name]
        assert (got["n"], got["diff"], got["low"], got["high"]) == (
            3,
            pytest.approx(diff, abs=1e-12),
            pytest.approx(low, abs=1e-9),
            pytest.approx(high, abs=1e-9),
        )

        # recovered fraction: mean(none - redo) / mean(none - fresh); ReDo climbs half as fast, so about half
        recovered, gaps = m[none] - m[redo], m[none] - m[fresh]
        rec = r["recovered"][name]
        assert rec["n"] == 3 and rec["bounded"]
        assert rec["fraction"] == pytest.approx(recovered.mean() / gaps.mean(), rel=1e-9)
        assert 0.3 < rec["fraction"] < 0.7
        # Fieller's ends are where the paired t statistic of (none - redo) - r (none - fresh) is -+t
        assert t_statistic(recovered, gaps, rec["low"]) == pytest.approx(T2, rel=1e-6)
        assert t_statistic(recovered, gaps, rec["high"]) == pytest.approx(-T2, rel=1e-6)
        assert rec["low"] < rec["fraction"] < rec["high"]

    # the references have no difference to themselves, nor a recovered fraction
    assert arms["baseline"]["to_none"] is None and arms["baseline"]["recovered"] is None
    assert arms["fresh_start"]["to_fresh_start"] is None and arms["fresh_start"]["recovered"] is None
    assert arms["fresh_start"]["to_none"]["train"]["diff"] == pytest.approx(
        -result["gaps"][0]["train"]["diff"]
    )

    # the same numbers in compare.md, on the console and on compare.html
    diff, low, high = paired(m_train[redo], m_train[none])
    cells = f"{diff:+.4f} | [{low:+.4f}, {high:+.4f}]"
    md = (out / "compare.md").read_text()
    assert "## Plasticity over the task sequence" in md and cells in md
    fraction = arms["redo"]["recovered"]["train"]
    assert f"{fraction['fraction']:.1%} | [{fraction['low']:.1%}, {fraction['high']:.1%}]" in md
    stat = f"{m_train[none].mean():.4f} ± {m_train[none].std(ddof=1):.4f}"
    assert stat in md and stat in printed and f"[{low:+.4f}, {high:+.4f}]" in printed
    assert "plasticity gap (trains on - fresh start" in printed
    page = (out / "compare.html").read_text()
    assert (
        'id="plasticity"' in page and 'id="plasticity-gap"' in page and f"[{low:+.4f}, {high:+.4f}]" in page
    )
    png = base64.b64encode((out / "plasticity.png").read_bytes()).decode("ascii")
    assert f"data:image/png;base64,{png}" in page
    # arms over seeds carry the task columns too
    groups = {g["arm"]: g for g in json.loads((out / "seeds.json").read_text())["groups"]}
    assert groups["redo"]["task_val_loss_last_half"]["mean"] == pytest.approx(m_val[redo].mean())


def test_plasticity_figure_files(task_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = compare.compare_runs(task_runs, out)
    assert (
        result["figures"]["plasticity: end-of-task loss and dead ratio against the task"]
        == out / "plasticity.png"
    )
    assert_png(out / "plasticity.png")
    svg = (out / "plasticity.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    for label in LABELS.values():
        assert f"{label} (n=3)" in svg  # the legend names each arm, text kept as text
    assert "plasticity.png" in (out / "compare.md").read_text()

    # drawn from the task ends: each arm's line is the mean over seeds at each task, the band +- 1 sd
    groups = {
        LABELS[a]: [compare.load_run(p).metrics for p in task_runs if p.name.startswith(a)] for a in ARMS
    }
    fig = figures.plasticity_figure(groups)
    train_ax, val_ax, dead_ax = fig.axes
    for ax, values in ((train_ax, TRAIN), (val_ax, VAL), (dead_ax, DEAD)):
        lines = [line for line in ax.get_lines() if line.get_label().endswith("(n=3)")]
        assert [line.get_label() for line in lines] == [f"{LABELS[a]} (n=3)" for a in ARMS]
        for line, arm_values in zip(lines, values, strict=True):
            assert line.get_xdata().tolist() == list(range(TASKS))
            assert np.allclose(line.get_ydata(), arm_values.mean(axis=0))
        band = ax.collections[0].get_paths()[0].vertices[:, 1]
        none_sd = values[0].std(axis=0, ddof=1)
        assert band.max() == pytest.approx((values[0].mean(axis=0) + none_sd).max())
    assert dead_ax.get_title() == "Dead units: mlp_post"


def test_report_page_has_the_per_task_figure(task_runs: list[Path], tmp_path: Path) -> None:
    page = run_report_html(task_runs[0])
    match = re.search(r'<figure id="fig-tasks"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert match is not None
    (tmp_path / "tasks.png").write_bytes(base64.b64decode(match[1]))
    assert_png(tmp_path / "tasks.png")
    # under Training, after the loss curves
    assert page.index('id="fig-loss"') < page.index('id="fig-tasks"') < page.index("<h2>Neuron liveness</h2>")

    fig = figures.plasticity_figure({"run": [compare.load_run(task_runs[0]).metrics]})
    line = fig.axes[0].get_lines()[0]
    assert np.allclose(line.get_ydata(), TRAIN[0, 0])  # the run's own numbers, task 2's resumed row last
    assert len(fig.axes[0].collections) == 0  # one run: no band


def test_runs_without_tasks_are_unchanged(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path / name, config("none", "relu"), [{"step": 10, "train/loss": 3.0, "val/loss": 2.5}])
        for name in ("a", "b")
    ]
    result = compare.compare_runs(runs, tmp_path / "cmp")
    assert result["plasticity"] is None and not (tmp_path / "cmp" / "plasticity.json").exists()
    assert not any(k in row for row in result["rows"] for k in compare.TASK_COLUMNS)
    assert "Plasticity" not in (tmp_path / "cmp" / "compare.md").read_text()
    assert not list((tmp_path / "cmp").glob("plasticity*"))
    page = run_report_html(runs[0])
    assert 'id="fig-tasks"' not in page


def test_a_run_without_tasks_beside_runs_with_them(task_runs: list[Path], tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain", config("none", "gelu"), [{"step": 10, "val/loss": 2.5}])
    result = compare.compare_runs([*task_runs, plain], tmp_path / "cmp")
    row = next(r for r in result["rows"] if r["run"] == "plain")
    assert all(row[k] is None for k in compare.TASK_COLUMNS)
    assert "baseline (activation=gelu)" not in {a["arm"] for a in result["plasticity"]["arms"]}


def test_method_arms_pair_with_the_references_of_their_own_settings(tmp_path: Path) -> None:
    """ReLU and GELU arms in one comparison: each method is compared to the trains-on and fresh-start arms of
    its own activation, and each activation has its own gap."""
    root = tmp_path / "runs"
    paths = [task_run(root, arm, seed) for arm in ARMS for seed in SEEDS]
    for path in [task_run(root / "gelu", arm, seed) for arm in ("none", "fresh_start") for seed in SEEDS]:
        text = (path / "config.yaml").read_text().replace("activation: relu", "activation: gelu")
        (path / "config.yaml").write_text(text)
        paths.append(path)
    result = compare.compare_runs(paths, tmp_path / "cmp")["plasticity"]
    assert [(g["none"], g["fresh_start"]) for g in result["gaps"]] == [
        ("baseline (activation=relu)", "fresh_start (activation=relu)"),
        ("baseline (activation=gelu)", "fresh_start (activation=gelu)"),
    ]
    redo = next(a for a in result["arms"] if a["arm"] == "redo")
    assert redo["to_none"]["reference"] == "baseline (activation=relu)"


def test_fieller_interval_unbounded_when_the_gap_is_noise() -> None:
    gap = [0.10, -0.08, 0.02]  # mean 0.013, sd 0.09: not told apart from 0 with 3 pairs
    assert paired_ratio_interval([0.05, -0.02, 0.01], gap) is None
    assert paired_ratio_interval([0.5], [1.0]) is None  # one pair: no spread to estimate
    # no spread at all: the interval is the ratio itself
    low, high = paired_ratio_interval([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_task_keys_parse_as_design_names() -> None:
    for key in (metric_keys.TASK_INDEX, metric_keys.TASK_TRAIN_LOSS, metric_keys.TASK_VAL_LOSS):
        assert metric_keys.parse_key(key) == metric_keys.MetricKey("plain", key)
    assert metric_keys.TASK_KEYS == ("task/index", "task/train_loss", "task/val_loss", "task/weight_norm")
