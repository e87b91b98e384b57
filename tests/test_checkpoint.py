"""Checkpoint state: nested state round-trips through safetensors + JSON; only complete ones are found."""

from __future__ import annotations

import torch

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
    ckpt.prune(tmp_path, limit=1)
    assert [p.name for p in ckpt.list_complete(tmp_path)] == ["step_00000040"]
    assert not (tmp_path / ".tmp-step_00000050").exists()


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
