"""Task sequences (`tasks`): the permuted-vocabulary tasks, the per-task rows and files, the first task against a
plain run, the boundary's revival, resume after a kill at each boundary phase, and 1 against 2 processes."""

from __future__ import annotations

import dataclasses
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, killed_at, launch, launch_findings, tiny_overrides
from reviveformer import builder, faults, metric_keys
from reviveformer import checkpoint as ckpt
from reviveformer.config import load_config
from reviveformer.loop import EpochEnd
from reviveformer.tasks import permute_batch, task_permutation
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "continual-permuted.yaml")
# 3 tasks of 10 steps on the tiny corpus (8 sequences of 32 tokens a step), each boundary checkpointed
TASKS = {
    "train.log_every": 5,
    "tasks.count": 3,
    "tasks.steps": 10,
    "train.checkpoint_limit": 20,
    "train.deterministic": True,
}
SITES = ("mlp_pre", "mlp_post", "attn_out")
DRAWN: list[int] = []
"""The steps at which `tasks_run` drew its figures."""


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def task_rows(run_dir: Path) -> list[dict]:
    return [r for r in rows(run_dir) if metric_keys.TASK_INDEX in r]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread, as in the launched processes: the thread count changes float sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_figures(monkeypatch):
    monkeypatch.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    monkeypatch.setattr("reviveformer.figures.plot_revived_per_layer", lambda details, path: None)


# ------------------------------------------------------------------------------------------ the permutation


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_permutation_is_a_bijection_and_task_0_the_identity(seed):
    vocab = 1031
    assert torch.equal(task_permutation(seed, 0, vocab), torch.arange(vocab))
    perms = [task_permutation(seed, k, vocab) for k in range(1, 5)]
    for perm in perms:
        assert torch.equal(perm.sort().values, torch.arange(vocab))
        assert (perm != torch.arange(vocab)).sum() > vocab // 2  # a real shuffle, not near the identity
    for a, b in zip(perms, perms[1:], strict=False):
        assert not torch.equal(a, b)
    # a function of (seed, k) alone: drawn again in another order, after the global RNG has moved
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(task_permutation(seed, 3, vocab), perms[2])
    assert not torch.equal(task_permutation(seed + 1, 3, vocab), perms[2])


def test_a_batch_is_mapped_token_by_token_and_ignored_labels_kept():
    perm = task_permutation(0, 2, 50)
    ids = torch.tensor([[0, 5, 49], [7, 7, 1]])
    labels = torch.tensor([[0, -100, 49], [7, -100, 1]])
    out = permute_batch({"input_ids": ids, "labels": labels}, perm)
    expected = [[int(perm[t]) for t in row] for row in ids.tolist()]
    assert out["input_ids"].tolist() == expected
    assert out["labels"][:, 1].tolist() == [-100, -100]
    assert out["labels"][:, [0, 2]].tolist() == [
        [expected[0][0], expected[0][2]],
        [expected[1][0], expected[1][2]],
    ]


def _build(run_dir: Path, corpus: Path, **extra):
    from accelerate import Accelerator

    cfg = load_config(RECIPE, tiny_overrides(run_dir, corpus, **{**TASKS, **extra}))
    return builder.build_run(cfg, Accelerator(cpu=True), run_dir)


def test_two_builds_share_the_tasks_and_validation_sees_the_current_one(tmp_path, corpus_file):
    """Two runs built apart (other arms, other run seeds) permute alike; the validation loader gives task k's
    batches: perm_k of the plain ones."""
    a = _build(tmp_path / "a", corpus_file)
    b = _build(tmp_path / "b", corpus_file, **{"train.seed": 5, "revival.method": "redo"})
    vocab = len(a.data.tokenizer)
    for k in range(3):
        assert torch.equal(a.tasks.permutation(k), b.tasks.permutation(k))
        assert torch.equal(a.tasks.permutation(k), task_permutation(0, k, vocab))
    plain = next(iter(a.val_loader.loader))
    for k in range(3):
        a.pos.task = k
        seen = next(iter(a.val_loader))
        assert torch.equal(seen["input_ids"], task_permutation(0, k, vocab)[plain["input_ids"]])
        assert torch.equal(seen["labels"], task_permutation(0, k, vocab)[plain["labels"]])
    assert not torch.equal(seen["input_ids"], plain["input_ids"])
    a.pos.task = 5  # after the last boundary: the last task's data
    assert torch.equal(next(iter(a.val_loader))["input_ids"], seen["input_ids"])


def test_the_permutation_is_the_same_in_every_process(tmp_path):
    found = launch_findings("dist_tasks_script.py", tmp_path / "out.json")
    assert found["same_everywhere"] == [True, True, True]
    assert found["identity_at_0"] is True


# ------------------------------------------------------------------------------------------ a run of tasks


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("tasks") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: DRAWN.append(step))
    try:
        summary = train(
            load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **{**TASKS, "train.plots": True}))
        )
    finally:
        mp.undo()
    assert summary.steps == 30
    return run_dir


@pytest.mark.slow
def test_each_task_ends_with_its_row_and_liveness_file(tasks_run):
    got = task_rows(tasks_run)
    assert [(r["step"], r[metric_keys.TASK_INDEX]) for r in got] == [(10, 0), (20, 1), (30, 2)]
    train_loss = {
        r["step"]: r[metric_keys.TRAIN_LOSS] for r in rows(tasks_run) if metric_keys.TRAIN_LOSS in r
    }
    for r in got:
        for key in (*metric_keys.TASK_KEYS, *(metric_keys.dead_ratio_key(s) for s in SITES)):
            assert key in r, key
        for s in SITES:
            assert 0.0 <= r[metric_keys.dormant_ratio_key(s)] <= 1.0
        # the last log window of the task: the train log of its last step
        assert r[metric_keys.TASK_TRAIN_LOSS] == train_loss[r["step"]]
        data = json.loads((tasks_run / "liveness" / f"task_{r[metric_keys.TASK_INDEX]:03d}.json").read_text())
        dead = sum(len(e["dead_units"]) for e in data["sites"]["mlp_post"])
        units = sum(e["units"] for e in data["sites"]["mlp_post"])
        assert r[metric_keys.dead_ratio_key("mlp_post")] == pytest.approx(dead / units)
        dormant = sum(len(e["dormant_units"]) for e in data["sites"]["mlp_post"])
        assert r[metric_keys.dormant_ratio_key("mlp_post")] == pytest.approx(dormant / units)
    unparsed = sorted({k for r in rows(tasks_run) for k in r} - {metric_keys.STEP})
    assert [k for k in unparsed if metric_keys.parse_key(k) is None] == []  # every key a design name
    # a new task is new data: its start is worse than the end of the task before (a shuffled vocabulary)
    first_logs = {
        r["step"]: r[metric_keys.TRAIN_LOSS] for r in rows(tasks_run) if metric_keys.TRAIN_LOSS in r
    }
    assert first_logs[15] > got[0][metric_keys.TASK_TRAIN_LOSS]


@pytest.mark.slow
def test_figures_are_drawn_at_each_task_end(tasks_run):
    assert DRAWN == [10, 20, 30]


@pytest.mark.slow
def test_a_task_run_ends_with_the_validation_loss_of_its_final_weights(tasks_run, tmp_path, capsys):
    """The last `val/loss` row is of the final weights (the last task end's measurement, logged at the run's
    last step), and the report and compare read that one as the run's final validation loss (they once showed a
    mid-run epoch end's, or "-" when no epoch end fell inside the run)."""
    from reviveformer.cli import main

    val_rows = [r for r in rows(tasks_run) if metric_keys.VAL_LOSS in r]
    last_task = task_rows(tasks_run)[-1]
    assert val_rows[-1]["step"] == last_task["step"] == 30
    assert val_rows[-1][metric_keys.VAL_LOSS] == last_task[metric_keys.TASK_VAL_LOSS]
    assert sum(r["step"] == 30 for r in val_rows) == 1  # logged once
    out = tmp_path / "cmp"
    assert main(["compare", str(tasks_run), "--out", str(out)]) == 0
    [row] = json.loads((out / "compare.json").read_text())
    assert row["final_val_loss"] == pytest.approx(last_task[metric_keys.TASK_VAL_LOSS])


@pytest.mark.slow
def test_the_weight_norm_is_the_checkpoints(tasks_run):
    for r in task_rows(tasks_run):
        weights = load_file(tasks_run / "checkpoints" / f"step_{r['step']:08d}" / "model.safetensors")
        # every parameter trains; tied embeddings are saved once (wte and lm_head share one tensor)
        norm = torch.sqrt(sum(t.double().pow(2).sum() for t in weights.values()))
        assert r[metric_keys.TASK_WEIGHT_NORM] == pytest.approx(float(norm), rel=1e-6)


@pytest.mark.slow
def test_the_first_task_is_a_plain_run(tasks_run, tmp_path, corpus_file, no_figures):
    plain = tmp_path / "plain"
    train(
        load_config(
            RECIPE,
            tiny_overrides(plain, corpus_file, **{**TASKS, "tasks.kind": "none", "train.max_steps": 10}),
        )
    )

    def losses(d: Path) -> list[tuple[int, float]]:
        return [(r["step"], r[metric_keys.TRAIN_LOSS]) for r in rows(d) if metric_keys.TRAIN_LOSS in r]

    assert losses(plain) == losses(tasks_run)[:2]
    val = [r[metric_keys.VAL_LOSS] for r in rows(plain) if metric_keys.VAL_LOSS in r]
    assert val[-1] == task_rows(tasks_run)[0][metric_keys.TASK_VAL_LOSS]
    a = load_file(plain / "final" / "model.safetensors")
    b = load_file(tasks_run / "checkpoints" / "step_00000010" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ resume

# ReDo at each boundary and dropout on: the boundary's revival, the RNG and the optimizer state all matter
RESUME = {
    **TASKS,
    "model.dropout": 0.1,
    "revival.method": "redo",
    "revival.every": "task",
    "train.checkpoint_every": 5,
    "train.resume": "auto",
}


def _resume_run(run_dir: Path, corpus: Path):
    return train(load_config(RECIPE, tiny_overrides(run_dir, corpus, **RESUME)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus_file):
    mp = pytest.MonkeyPatch()
    mp.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    mp.setattr("reviveformer.figures.plot_revived_per_layer", lambda details, path: None)
    mp.delenv(faults.ENV, raising=False)
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    try:
        _resume_run(run_dir, corpus_file)
    finally:
        mp.undo()
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "task_end:1",
        "task_end:2",
        "after_task_revival:1",
        "after_task_revival:2",
        "task_start:1",
        "task_start:2",
    ],
)
def test_killed_at_a_boundary_phase_resumes_to_the_same_result(
    fault, straight, tmp_path, corpus_file, monkeypatch, no_figures
):
    run_dir = tmp_path / "run"
    with killed_at(fault):
        _resume_run(run_dir, corpus_file)
    assert _resume_run(run_dir, corpus_file).steps == 30
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(run_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    revivals = [r for r in rows(straight) if metric_keys.REVIVAL_COUNT in r]
    assert [r["step"] for r in revivals] == [10, 20]  # at the boundaries, not after the last task
    # the per-task rows of the resumed run (the boundary replayed once after the kill) are the straight run's
    mine = {r[metric_keys.TASK_INDEX]: r for r in task_rows(run_dir)}
    for r in task_rows(straight):
        assert mine[r[metric_keys.TASK_INDEX]] == r
    for k in range(3):
        name = f"task_{k:03d}.json"
        assert json.loads((straight / "liveness" / name).read_text()) == json.loads(
            (run_dir / "liveness" / name).read_text()
        )


# ------------------------------------------------------------------------------------------ processes


@pytest.mark.slow
def test_two_processes_train_the_tasks_as_one(tmp_path, corpus_file):
    """2 processes of 8 sequences a step each against 1 process accumulating the same 2 batches a step."""
    extra = {**TASKS, "train.deterministic": False}
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(RECIPE, tiny_overrides(one, corpus_file, **extra, **{"train.grad_accum": 2})))
    p = launch("reviveformer", ["train", RECIPE, *tiny_overrides(two, corpus_file, **extra)])
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = task_rows(one), task_rows(two)
    assert [r[metric_keys.TASK_INDEX] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b, strict=True):
        assert ra["step"] == rb["step"]
        for key in (metric_keys.TASK_TRAIN_LOSS, metric_keys.TASK_VAL_LOSS, metric_keys.TASK_WEIGHT_NORM):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), key
    wa = load_file(one / "final" / "model.safetensors")
    wb = load_file(two / "final" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4), k


# ------------------------------------------------------------------------------------------ lengths and schedule


def test_task_lengths_in_epochs_and_the_restarted_schedule():
    from reviveformer.builder import build_scheduler
    from reviveformer.config import TasksConfig, TrainConfig
    from reviveformer.tasks import TaskSequence

    tc = TasksConfig(kind="corpora", count=2, epochs=2, corpora=[{"source": "stdlib"}])
    tasks = TaskSequence(tc, 10, [3, 5], log_every=2, device="cpu")
    assert tasks.steps == [6, 10] and tasks.total_steps == 16
    assert [tasks.end_step(k) for k in range(2)] == [6, 16]
    assert [tasks.schedule_point(s) for s in (0, 5, 6, 15)] == [(0, 6), (5, 6), (0, 10), (9, 10)]
    with pytest.raises(Exception, match="not a multiple of train.log_every=4"):
        TaskSequence(tc, 10, [3, 5], log_every=4, device="cpu")
    # warm-up 2 then cosine to 0.1 over each task: the rate at a task's first step is the warm-up's first
    train_cfg = TrainConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, train_cfg, lambda: 16, tasks.schedule_point)
    lrs = []
    for _ in range(16):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[6] == pytest.approx(0.5)  # (0 + 1) / 2
    assert lrs[1] == lrs[7] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))  # 3 of 4 cosine steps
    assert lrs[15] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


# ------------------------------------------------------------------------------------------ corpora


@pytest.fixture(scope="module")
def second_corpus(tmp_path_factory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("corpus2") / "corpus2.txt"
    path.write_text("\n".join((stdlib / n).read_text() for n in ("calendar.py", "csv.py", "difflib.py")))
    return path


def _corpora(second: Path, **extra) -> dict:
    return {
        **TASKS,
        "tasks.kind": "corpora",
        "tasks.count": 2,
        "tasks.corpora": f"[{{source: text, path: {second}}}]",
        **extra,
    }


@pytest.mark.slow
def test_sequential_corpora_measure_each_task_on_its_own_split(
    tmp_path, corpus_file, second_corpus, no_figures
):
    from accelerate import Accelerator

    from reviveformer.data import prepare_data
    from reviveformer.evaluation import evaluate, val_loader

    run_dir = tmp_path / "run"
    cfg = load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **_corpora(second_corpus)))
    assert train(cfg).steps == 20
    got = task_rows(run_dir)
    assert [(r["step"], r[metric_keys.TASK_INDEX]) for r in got] == [(10, 0), (20, 1)]
    # the held-out loss of each task's end, by hand: its checkpoint's weights on that task's own split
    from transformers import GPT2LMHeadModel

    tok = prepare_data(cfg.data, cfg.train.seed).tokenizer
    # task 1: the corpus entry's own keys (its max_tokens unset: uncapped, not the data section's cap)
    second = dataclasses.replace(cfg.data, source="text", path=str(second_corpus), max_tokens=None)
    splits = [cfg.data, second]
    acc = Accelerator(cpu=True)
    model = GPT2LMHeadModel.from_pretrained(run_dir / "final")
    losses = {}
    for k, source in enumerate(splits):
        data = prepare_data(source, cfg.train.seed, tokenizer=tok)
        losses[k] = evaluate(model, val_loader(acc, data.val, cfg.train.batch_size), acc)[
            metric_keys.VAL_LOSS
        ]
    assert got[1][metric_keys.TASK_VAL_LOSS] == pytest.approx(losses[1], rel=1e-6)
    assert abs(losses[0] - losses[1]) > 1e-3  # the two splits are told apart


def _corpora_run(run_dir: Path, corpus_file: Path, second_corpus: Path):
    extra = _corpora(second_corpus, **{k: v for k, v in RESUME.items() if k not in TASKS})
    return train(load_config(RECIPE, tiny_overrides(run_dir, corpus_file, **extra)))


@pytest.fixture(scope="module")
def corpora_straight(tmp_path_factory, corpus_file, second_corpus) -> Path:
    """The corpora run below never killed, trained once for both kill moments (read only)."""
    run_dir = tmp_path_factory.mktemp("corpora") / "straight"
    assert _corpora_run(run_dir, corpus_file, second_corpus).steps == 20
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["task_end:1", "task_start:1"])
def test_corpora_resume_after_a_kill_at_the_switch(
    fault, tmp_path, corpus_file, second_corpus, corpora_straight, no_figures
):
    with killed_at(fault):
        _corpora_run(tmp_path / "resumed", corpus_file, second_corpus)
    assert _corpora_run(tmp_path / "resumed", corpus_file, second_corpus).steps == 20
    a = load_file(corpora_straight / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert task_rows(corpora_straight) == task_rows(tmp_path / "resumed")


def test_a_bad_corpus_is_named_as_its_tasks_corpora_entry(tmp_path, corpus_file, capsys):
    """A corpus file that is not there is reported as `tasks.corpora[0].path=...` (once: `data.path=...`, the
    data section's key, which holds a good file), with exit 2 and no run folder."""
    from reviveformer.cli import main

    missing = tmp_path / "nowhere.txt"
    run_dir = tmp_path / "run"
    args = tiny_overrides(run_dir, corpus_file, **_corpora(missing))
    assert main(["train", str(RECIPE), *args]) == 2
    err = capsys.readouterr().err
    assert f"tasks.corpora[0].path={missing} does not exist" in err and "data.path=" not in err, err
    assert "Traceback" not in err and not run_dir.exists()


@pytest.mark.slow
def test_a_task_run_is_refused_on_another_process_count(tasks_run, corpus_file):
    """A 1 -> 2 process resume of a task run once trained the later tasks on twice the tokens (the tasks are
    counted in optimizer steps); it is refused before anything is written, naming the saved count. The same
    count still resumes."""
    from reviveformer.errors import CheckpointError
    from reviveformer.resume import check_resume

    cfg = load_config(RECIPE, tiny_overrides(tasks_run, corpus_file, **TASKS))
    saved = tasks_run / "checkpoints" / "step_00000010"
    data = ckpt.read_state(saved)["data_fingerprint"]  # the same data: only the process count differs
    with pytest.raises(CheckpointError, match=r"tasks\.kind=permuted_vocab.* on 2 process.*trained on 1"):
        check_resume(saved, cfg, 2, data)
    assert check_resume(saved, cfg, 1, data)["step"] == 10


class _CountedSteps(int):
    """A task length that counts the additions and comparisons made with it, and refuses past a budget: the work
    of building and reading a task sequence, counted without a clock."""

    ops = 0
    budget = 0

    def _count(self) -> None:
        type(self).ops += 1
        assert type(self).ops <= type(self).budget, "more work than linear in tasks.count"

    def __add__(self, other):
        self._count()
        return _CountedSteps(int(self) + int(other))

    __radd__ = __add__

    def __lt__(self, other):
        self._count()
        return int(self) < int(other)

    def __gt__(self, other):
        self._count()
        return int(self) > int(other)


def test_many_tasks_cost_linear_work_to_set_up_and_log_work_per_step():
    """Issue 27: the task ends were sums over every prefix (30,000 tasks took 6 s of set-up, 300,000 minutes),
    and the restarted schedule scanned them at every step. Building 3,000 tasks may add task lengths a few
    times per task; placing a step in its task (read at every step) compares a few times log2(3,000)."""
    from reviveformer.config import TasksConfig
    from reviveformer.tasks import TaskSequence

    count = 3000
    tc = TasksConfig(kind="permuted_vocab", count=count, steps=_CountedSteps(5))
    _CountedSteps.ops, _CountedSteps.budget = 0, 4 * count
    tasks = TaskSequence(tc, 10, [7], log_every=5, device="cpu")
    assert tasks.total_steps == 5 * count and tasks.end_step(count - 1) == 5 * count
    _CountedSteps.ops, _CountedSteps.budget = 0, 4 * math.ceil(math.log2(count))
    assert tasks.schedule_point(5 * count - 1) == (4, 5)
    assert tasks.schedule_point(5 * 1234 + 2) == (2, 5)
