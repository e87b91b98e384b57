"""Checkpoint state: nested state round-trips through safetensors + JSON; only complete and intact ones are
found, loaded and kept by rotation."""

from __future__ import annotations

import hashlib
import json
import logging
import struct

import pytest
import torch
from safetensors.torch import save_file

from reviveformer import checkpoint as ckpt


def test_state_round_trips_without_pickle(tmp_path):
    state = {
        "step": 7,
        "epoch": 1,
        "name": "x",
        "none": None,
        "monitor": {"mlp_post": {"fire_count": torch.arange(6).reshape(2, 3), "tokens": torch.tensor(5)}},
        "reviver": {
            "masks": {0: torch.tensor([[True, False]]), 1: torch.zeros(2, 2, dtype=torch.bool)},
            "previous": [[1, 2], []],
        },
        "alerts": {"tripped": [["r", 0, True]], "pair": (1, 2.5)},
    }
    ckpt.write_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.STATE_JSON, ckpt.STATE_TENSORS]
    back = ckpt.read_state(tmp_path)
    assert back["step"] == 7 and back["name"] == "x" and back["none"] is None
    assert torch.equal(back["monitor"]["mlp_post"]["fire_count"], torch.arange(6).reshape(2, 3))
    assert back["monitor"]["mlp_post"]["fire_count"].dtype == torch.int64
    assert torch.equal(back["reviver"]["masks"][0], torch.tensor([[True, False]]))
    assert back["reviver"]["previous"] == [[1, 2], []]
    assert back["alerts"]["pair"] == (1, 2.5)


def _fake_checkpoint(root, step, complete=True, weights=True):
    d = root / ckpt.step_dir_name(step)
    d.mkdir(parents=True)
    ckpt.write_state(d, {"step": step})
    if weights:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    if complete:
        ckpt.write_manifest(d, step, num_processes=1)
    return d


def test_resume_point_is_newest_complete_and_readable(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 10)
    good = _fake_checkpoint(tmp_path, 20)
    _fake_checkpoint(tmp_path, 30, complete=False)  # killed mid-write: no marker
    corrupt = _fake_checkpoint(tmp_path, 40)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    (tmp_path / ".tmp-step_00000050").mkdir()
    assert [p.name for p in ckpt.list_complete(tmp_path)] == [
        "step_00000010",
        "step_00000020",
        "step_00000040",
    ]
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == good
    assert "step_00000040" in caplog.text


def test_a_checkpoint_with_a_part_missing_is_skipped_like_a_corrupt_one(tmp_path, caplog):
    """The manifest in the marker lists every file with its size: a checkpoint that lost one (optimizer.bin
    here) or holds one cut short is skipped with a warning naming it, and the previous complete one is taken."""
    for step in (10, 20, 30):
        d = tmp_path / ckpt.step_dir_name(step)
        d.mkdir()
        ckpt.write_state(d, {"step": step})
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        (d / "optimizer.bin").write_bytes(b"x" * 100)
        ckpt.write_manifest(d, step, num_processes=1)
    assert ckpt.read_manifest(tmp_path / "step_00000010")["files"]["optimizer.bin"] == 100
    (tmp_path / "step_00000030" / "optimizer.bin").unlink()
    (tmp_path / "step_00000020" / "optimizer.bin").write_bytes(b"x" * 50)
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == tmp_path / "step_00000010"
    assert "step_00000030 (optimizer.bin missing or cut short)" in caplog.text
    assert "step_00000020 (optimizer.bin missing or cut short)" in caplog.text


def test_a_complete_temporary_checkpoint_is_found_when_its_rename_did_not_happen(tmp_path):
    """Saving a step again (the epoch-end checkpoint after a periodic one of the same step) removes the old
    folder before renaming the new one: killed in between, the complete temporary folder is the resume point."""
    _fake_checkpoint(tmp_path, 10)
    tmp = _fake_checkpoint(tmp_path, 20)
    tmp = tmp.rename(tmp_path / ".tmp-step_00000020")
    (tmp_path / ".tmp-step_00000030").mkdir()  # killed before its marker: never complete
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step_00000010", ".tmp-step_00000020"]
    assert ckpt.find_resume_point(tmp_path) == tmp
    _fake_checkpoint(tmp_path, 20)  # both: the renamed one wins
    assert ckpt.find_resume_point(tmp_path) == tmp_path / "step_00000020"


def _data_start(weights) -> int:
    """Where a safetensors file's tensor bytes begin (after its 8-byte length and JSON header)."""
    return 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]


def _overwrite(path, offset: int, data: bytes) -> None:
    """Change bytes in place: the file keeps its size, so a size check alone cannot see it."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    assert path.stat().st_size == size


def _strip_hashes(d) -> None:
    """The manifest a checkpoint from before content hashes has: sizes only."""
    manifest = json.loads((d / ckpt.MARKER).read_text())
    del manifest["hash"], manifest["hashes"]
    (d / ckpt.MARKER).write_text(json.dumps(manifest))


def test_the_manifest_holds_each_parts_sha256(tmp_path):
    d = _fake_checkpoint(tmp_path, 10)
    manifest = ckpt.read_manifest(d)
    assert manifest["hash"] == "sha256"
    names = sorted(p.name for p in d.iterdir() if p.name != ckpt.MARKER)
    assert sorted(manifest["hashes"]) == names == sorted(manifest["files"])
    for name in names:
        assert manifest["hashes"][name] == hashlib.sha256((d / name).read_bytes()).hexdigest(), name


def test_a_part_changed_at_the_same_size_is_skipped_and_refused(tmp_path, caplog):
    """Bytes flipped inside model.safetensors: its size is right, its hash is not. The resume takes the
    previous checkpoint, with a warning naming the file; loaded by hand, it is refused before anything loads."""
    good = _fake_checkpoint(tmp_path, 10)
    bad = _fake_checkpoint(tmp_path, 20)
    weights = bad / "model.safetensors"
    _overwrite(weights, _data_start(weights), b"\x01")
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == good
    assert "step_00000020 (model.safetensors changed since it was written (sha256 differs))" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=r"step_00000020 is damaged \(model.safetensors changed"):
        ckpt.load_checkpoint(None, bad)  # refused before the accelerator is touched


@pytest.mark.parametrize("hashes", [True, False])
def test_non_finite_weights_are_refused_even_where_the_hash_agrees(tmp_path, caplog, hashes):
    """NaN weights in a checkpoint written with them (hash agrees), or in one from before hashes."""
    good = _fake_checkpoint(tmp_path, 10)
    bad = tmp_path / ckpt.step_dir_name(20)
    bad.mkdir()
    ckpt.write_state(bad, {"step": 20})
    save_file({"a": torch.zeros(2), "w": torch.tensor([0.0, float("nan")])}, str(bad / "model.safetensors"))
    ckpt.write_manifest(bad, 20, num_processes=1)
    if not hashes:
        _strip_hashes(bad)
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == good
    assert "step_00000020 (model.safetensors holds non-finite values (w))" in caplog.text


def test_checkpoints_from_before_hashes_load_on_sizes_without_a_warning(tmp_path, caplog):
    """A manifest with sizes only, and a marker from before manifests (the step number alone): both are
    taken without a word; a part cut short is still caught by its size."""
    sized = _fake_checkpoint(tmp_path, 10)
    (sized / "optimizer.bin").write_bytes(b"x" * 100)
    ckpt.write_manifest(sized, 10, num_processes=1)
    _strip_hashes(sized)
    bare = _fake_checkpoint(tmp_path, 20, complete=False)
    for name in ("optimizer.bin", "random_states_0.pkl"):
        torch.save({"step": 20}, bare / name)
    (bare / ckpt.MARKER).write_text("20")
    with caplog.at_level(logging.INFO, logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == bare
        (bare / "optimizer.bin").unlink()
        assert ckpt.find_resume_point(tmp_path) == sized
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping damaged checkpoint {bare} (optimizer.bin missing); trying an older one"
    ]
    (sized / "optimizer.bin").write_bytes(b"x" * 99)
    assert ckpt.find_resume_point(tmp_path) is None


def test_unreadable_random_states_are_damage_even_without_hashes(tmp_path, caplog):
    """Accelerate's load_state skips random states it cannot read without a word, and the resume is then no
    longer bit-identical; the checkpoint is skipped as damaged instead (a hash catches it first where the
    manifest has one)."""
    for step in (10, 20):
        d = _fake_checkpoint(tmp_path, step, complete=False)
        torch.save({"step": step}, d / "random_states_0.pkl")
        ckpt.write_manifest(d, step, num_processes=1)
    rng = tmp_path / "step_00000020" / "random_states_0.pkl"
    _overwrite(rng, 0, b"\x00" * rng.stat().st_size)
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == tmp_path / "step_00000010"
    assert "(random_states_0.pkl changed since it was written" in caplog.text
    _strip_hashes(tmp_path / "step_00000020")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reviveformer"):
        assert ckpt.find_resume_point(tmp_path) == tmp_path / "step_00000010"
    assert "step_00000020 (random_states_0.pkl does not read back (" in caplog.text


def _names(root) -> list[str]:
    return [p.name for p in ckpt.list_complete(root)]


def _damage(d) -> None:
    _overwrite(d / "model.safetensors", _data_start(d / "model.safetensors"), b"\x01")


def test_rotation_keeps_the_checkpoint_just_saved_and_counts_only_good_ones(tmp_path):
    """A resume from step 4 past a damaged step 6, saving step 5 with checkpoint_limit=1: step 5 (the newest
    good one) stays, step 6 is left for the run to replace, step 4 goes. Rotation used to keep step 6 alone."""
    _fake_checkpoint(tmp_path, 4)
    _damage(_fake_checkpoint(tmp_path, 6))
    saved = _fake_checkpoint(tmp_path, 5)
    (tmp_path / ".tmp-step_00000007").mkdir()  # left by a killed run
    ckpt.prune(tmp_path, limit=1, saved=saved)
    assert _names(tmp_path) == ["step_00000005", "step_00000006"]
    assert not (tmp_path / ".tmp-step_00000007").exists()
    # limit 2: a damaged one in the window is not one of the kept; the 2 newest good ones stay, it stays too
    for step in (1, 2):
        _fake_checkpoint(tmp_path, step)
    _damage(_fake_checkpoint(tmp_path, 3))
    saved = _fake_checkpoint(tmp_path, 4)
    ckpt.prune(tmp_path, limit=2, saved=saved)
    assert _names(tmp_path) == [f"step_0000000{s}" for s in (2, 3, 4, 5, 6)]
    # fewer than the limit before it: nothing goes
    ckpt.prune(tmp_path, limit=4, saved=tmp_path / "step_00000004")
    assert _names(tmp_path) == [f"step_0000000{s}" for s in (2, 3, 4, 5, 6)]


def _manifest_of(d) -> dict:
    return json.loads((d / ckpt.MARKER).read_text())


# How a crafted or damaged marker is written over the newest checkpoint's (step 20), and the words of the
# warning that skips it. Each would once have raised a traceback, skipped every check (null, a bare number), or
# read outside the checkpoint: /dev/zero for ever, `../` the file beside it.
DAMAGED_MARKERS = {
    "empty object": (lambda m: {}, '"files" is not a mapping'),
    "no files": (lambda m: {k: v for k, v in m.items() if k != "files"}, '"files" is not a mapping'),
    "files a list": (lambda m: {**m, "files": list(m["files"])}, '"files" is not a mapping'),
    "a size not a number": (lambda m: {**m, "files": {**m["files"], "model.safetensors": "9"}}, '"files"'),
    "hashes a list": (lambda m: {**m, "hashes": list(m["hashes"])}, '"hashes" is not a mapping'),
    "null": (lambda m: None, "holds NoneType null, not a manifest"),
    "another step's number": (lambda m: 7, "holds int 7, not a manifest"),
    "a list": (lambda m: [m], "not a manifest"),
    "/dev/zero hashed": (lambda m: {**m, "hashes": {**m["hashes"], "/dev/zero": "00"}}, "'/dev/zero'"),
    "/dev/zero sized": (lambda m: {**m, "files": {**m["files"], "/dev/zero": 0}}, "'/dev/zero'"),
    "a name outside": (lambda m: {**m, "files": {**m["files"], "../outside.bin": 3}}, "'../outside.bin'"),
    "the marker itself": (lambda m: {**m, "files": {**m["files"], "COMPLETE": 1}}, "'COMPLETE'"),
    "a hash without a size": (
        lambda m: {**m, "hashes": {**m["hashes"], "extra.bin": "00"}},
        "a hash but no size for 'extra.bin'",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MARKERS))
def test_a_crafted_or_damaged_marker_is_damage_not_a_traceback_nor_a_read_outside(
    case, tmp_path, monkeypatch, caplog
):
    """The newest checkpoint's marker is no manifest this version writes: that checkpoint is damaged (skipped
    with a warning saying why, the older good one used), and nothing outside a checkpoint folder is hashed."""
    checkpoints = tmp_path / "checkpoints"
    good = _fake_checkpoint(checkpoints, 10)
    newest = _fake_checkpoint(checkpoints, 20)
    (tmp_path / "outside.bin").write_bytes(b"abc")  # what `../outside.bin` would name
    make, words = DAMAGED_MARKERS[case]
    (newest / ckpt.MARKER).write_text(json.dumps(make(_manifest_of(newest))))
    hashed = []
    real_hash = ckpt.file_hash
    monkeypatch.setattr(ckpt, "file_hash", lambda path: hashed.append(path) or real_hash(path))
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert ckpt.find_resume_point(checkpoints) == good
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"skipping damaged checkpoint {newest} (") and words in warning, warning
    assert all(p.parent in (good, newest) for p in hashed), hashed
    with pytest.raises(ckpt.CheckpointError, match=rf"{newest.name} is damaged \("):
        ckpt.load_checkpoint(None, newest)  # named by hand: refused, before anything loads


def test_a_listed_link_or_device_is_no_part_of_a_checkpoint(tmp_path, caplog):
    """A manifest entry must be a regular file in the folder: a symlink (here to the checkpoint's own weights,
    of the right size and hash) is damage all the same, as a link to /dev/zero would be."""
    checkpoints = tmp_path / "checkpoints"
    good = _fake_checkpoint(checkpoints, 10)
    newest = _fake_checkpoint(checkpoints, 20)
    (newest / "link.safetensors").symlink_to(newest / "model.safetensors")
    ckpt.write_manifest(newest, 20, num_processes=1)  # the link listed with the size and hash of its target
    assert "link.safetensors" in _manifest_of(newest)["files"]
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert ckpt.find_resume_point(checkpoints) == good
    assert "link.safetensors missing or cut short" in caplog.records[0].getMessage()


def test_the_marker_from_before_manifests_is_its_own_step_number(tmp_path):
    """`COMPLETE` holding the folder's own step is the documented old format; any other number is damage."""
    d = _fake_checkpoint(tmp_path, 20, complete=False)
    for name in ("optimizer.bin", "random_states_0.pkl"):
        torch.save({"step": 20}, d / name)
    (d / ckpt.MARKER).write_text("20")
    assert ckpt.checked_manifest(d) == (None, None) and ckpt.damage(d) is None
    (d / ckpt.MARKER).write_text("21")
    assert ckpt.damage(d) == "COMPLETE holds int 21, not a manifest"
    (d / ckpt.MARKER).write_text('{"files": {"model.saf')  # a marker cut short
    assert ckpt.damage(d).startswith("COMPLETE does not read as JSON")
