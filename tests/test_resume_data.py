"""A resume knows its data (docs/design.md, "Resuming", Data): a checkpoint keeps the run's tokenizer and each
source's fingerprint, so that a corpus changed between a kill and `train.resume=auto` is refused (exit 2, naming
the source and split, nothing written), or with `train.resume_data=changed` trained on with one warning and the
run's own tokenizer; a checkpoint from before fingerprints resumes as it did, with one warning.

One killed run serves every case: a task sequence over two small folders of text (the data section's and one
tasks.corpora entry's), 2 steps a task, killed by the REVIVEFORMER_FAULT hook right after its step-2 checkpoint.
Each case changes a corpus file in place (the saved config names the folders) and puts it back after."""

from __future__ import annotations

import json
import logging
import shutil
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, killed_at, tiny_overrides
from reviveformer import checkpoint as ckpt
from reviveformer import faults
from reviveformer.cli import main
from reviveformer.config import DataConfig, load_config
from reviveformer.data import load_tokenizer, prepare_data
from reviveformer.loop import EpochEnd
from reviveformer.trainer import train

RECIPE = str(REPO / "recipes" / "quickstart.yaml")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TEXT = "def main(argv):\n    return sorted(set(argv), key=len)\n"
"""A fixed text whose token ids tell two tokenizers apart."""


def _extra(task_dir: Path, **more) -> dict:
    return {
        "tasks.kind": "corpora",
        "tasks.count": 2,
        "tasks.steps": 2,
        "train.epochs": 1,
        "tasks.corpora": f"[{{source: text, path: {task_dir}}}]",
        "train.log_every": 2,
        "train.checkpoint_every": 2,
        "train.resume": "auto",
        **more,
    }


def _args(root: Path, run_dir: Path, **more) -> list[str]:
    return ["train", RECIPE, *tiny_overrides(run_dir, root / "main", **_extra(root / "task", **more))]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(root, ids): root holds main/ and task/ (the corpora) and run/, killed after its step-2 checkpoint;
    ids: TEXT encoded by the tokenizer the run trained."""
    mp = pytest.MonkeyPatch()
    mp.setattr(EpochEnd, "_plots", lambda self, liveness, hists, step: None)
    mp.delenv(faults.ENV, raising=False)
    root = tmp_path_factory.mktemp("resume_data")
    for folder, names in (("main", ("textwrap.py", "shlex.py")), ("task", ("calendar.py",))):
        (root / folder).mkdir()
        for name in names:
            shutil.copy(STDLIB / name, root / folder / f"{name}.txt")
    try:
        with killed_at("after_periodic_checkpoint:1"):
            train(load_config(RECIPE, _args(root, root / "run")[2:]))
    finally:
        mp.undo()
    assert [p.name for p in ckpt.list_complete(root / "run" / "checkpoints")] == ["step_00000002"]
    return root, _tokenizer(root).encode(TEXT)


def _tokenizer(root: Path):
    """The tokenizer that the run's data section gives for the text there now (trained, or the cached one)."""
    cfg = load_config(RECIPE, _args(root, root / "run")[2:])
    return prepare_data(cfg.data, cfg.train.seed).tokenizer


@pytest.fixture
def changed(killed):
    """change(path): the file's text replaced by another module's; put back after the test."""
    saved: dict[Path, bytes] = {}

    def change(path: Path) -> None:
        saved[path] = path.read_bytes()
        path.write_text((STDLIB / "heapq.py").read_text())

    yield change
    for path, data in saved.items():
        path.write_bytes(data)


@pytest.fixture
def run_copy(killed, tmp_path) -> Path:
    shutil.copytree(killed[0] / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("folder", "named", "other"), [("main", "data", "task"), ("task", "tasks.corpora[0]", "main")]
)
def test_changed_data_refuses_the_resume_naming_it(killed, changed, run_copy, capsys, folder, named, other):
    root, _ = killed
    changed(next((root / folder).iterdir()))
    before = snapshot(run_copy)
    code = main(_args(root, run_copy))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "the data differs from what the run trained on" in err and "Traceback" not in err
    assert f"{named} ({root / folder}): train split's text changed" in err, err
    assert str(root / other) not in err and "train.resume_data=changed" in err  # only the changed source
    assert snapshot(run_copy) == before


def test_changed_data_trains_on_when_asked_with_the_runs_own_tokenizer(killed, changed, tmp_path, caplog):
    """With train.resume_data=changed, from the checkpoint folder alone (named by hand, no run folder around it):
    one warning, and the tokenizer encoding the new data and shipped in final/ is the run's own."""
    root, ids = killed
    alone = tmp_path / "elsewhere" / "step_00000002"
    shutil.copytree(root / "run" / "checkpoints" / alone.name, alone)
    changed(root / "main" / "shlex.py.txt")
    assert _tokenizer(root).encode(TEXT) != ids  # the new text trains another tokenizer
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        code = main(_args(root, run_dir, **{"train.resume": alone, "train.resume_data": "changed"}))
    assert code == 0
    warned = [r.getMessage() for r in caplog.records if "on changed data" in r.getMessage()]
    assert len(warned) == 1 and f"data ({root / 'main'}): " in warned[0] and "tasks.corpora" not in warned[0]
    assert json.loads((run_dir / "status.json").read_text())["final_step"] == 4
    assert load_tokenizer(str(run_dir / "final")).encode(TEXT) == ids


def _strip_to_old_format(checkpoint: Path) -> None:
    """The checkpoint as this version wrote it before checkpoints kept their tokenizer and data fingerprint."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (checkpoint / name).unlink(missing_ok=True)
    state = ckpt.read_state(checkpoint)
    state.pop("data_fingerprint", None)
    ckpt.write_state(checkpoint, state)
    ckpt.write_manifest(checkpoint, state["step"], num_processes=1)


def test_a_checkpoint_from_before_fingerprints_resumes_with_one_warning(killed, run_copy, caplog):
    root, _ = killed
    _strip_to_old_format(run_copy / "checkpoints" / "step_00000002")
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        assert main(_args(root, run_copy)) == 0
    warned = [r.getMessage() for r in caplog.records if "cannot be checked" in r.getMessage()]
    assert len(warned) == 1, warned
    assert json.loads((run_copy / "status.json").read_text())["final_step"] == 4
    # its later checkpoints keep the tokenizer and the fingerprint
    assert (run_copy / "checkpoints" / "step_00000004" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("fingerprinted", [True, False])
def test_a_failed_load_says_what_was_compared(killed, fingerprinted):
    """A checkpoint that does not load is not blamed on the model size or process count alone: the message
    says what the resume compared, and that a checkpoint without a fingerprint could not have its data checked
    (a changed corpus trains a tokenizer of another size, whose embedding no longer fits)."""
    from reviveformer.errors import CheckpointError
    from reviveformer.loop.training_state import TrainingState

    class NotFitting:
        def load_state(self, path):
            raise RuntimeError("size mismatch for transformer.wte.weight: [560, 64] against [512, 64]")

    path = killed[0] / "run" / "checkpoints" / "step_00000002"
    saved = ckpt.read_state(path)
    if not fingerprinted:
        saved.pop("data_fingerprint", None)
    state = TrainingState(NotFitting(), None, None, path, saved)
    with pytest.raises(CheckpointError) as e:
        state.load()
    message = str(e.value)
    assert "size mismatch" in message and "data" in message
    if fingerprinted:
        assert "data (each source's text and tokens" in message
    else:
        assert "could not be" in message and "tokenizer of another size" in message


def test_the_fingerprint_changes_with_one_files_content_and_only_then(tmp_path, caplog):
    from reviveformer.errors import CheckpointError
    from reviveformer.resume import check_data, compare_data

    folder = tmp_path / "text"
    folder.mkdir()
    for name in ("textwrap.py", "shlex.py", "glob.py"):
        shutil.copy(STDLIB / name, folder / f"{name}.txt")
    cfg = DataConfig(source="text", path=str(folder), vocab_size=300, block_size=32)
    first = prepare_data(cfg, 0)
    assert prepare_data(cfg, 0).contents == first.contents
    tok = first.tokenizer
    (folder / "glob.py.txt").write_text((folder / "glob.py.txt").read_text().replace("pattern", "patron"))
    now = prepare_data(cfg, 0, tokenizer=tok).contents
    assert now != first.contents and now["source"] == first.contents["source"] == str(folder)
    state = {"step": 3, "data_fingerprint": [first.contents]}
    check_data(Path("ckpt"), state, [first.contents], "same")  # nothing changed: nothing said
    with pytest.raises(CheckpointError, match=r"data \(.*text\): .*split's text changed"):
        check_data(Path("ckpt"), state, [now], "same")
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        check_data(Path("ckpt"), state, [now], "changed")
        check_data(Path("ckpt"), {"step": 3}, [now], "same")
    # data.source=stdlib under another Python: the source's own folder and its text differ
    other = {**now, "source": "the standard library at /usr/lib/python3.13"}
    saved = {**first.contents, "source": "the standard library at /usr/lib/python3.12"}
    [line] = compare_data([saved], [other])
    assert line.startswith(
        "data (the standard library at /usr/lib/python3.13): source the standard library at "
    )
    assert "python3.12 -> the standard library at /usr/lib/python3.13" in line and "text changed" in line
    said = [r.getMessage() for r in caplog.records]
    assert sum("on changed data (train.resume_data=changed)" in m for m in said) == 1
    assert sum("data cannot be checked" in m for m in said) == 1
