"""Stripping under 2 processes: every process makes the same decision (from reduced counts), so the
replicas stay identical, even though the processes' own counts would have chosen differently."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, accelerate_launch


@pytest.mark.slow
def test_replicas_identical_after_a_strip(tmp_path):
    out = tmp_path / "out.json"
    p = accelerate_launch([str(REPO / "tests" / "dist_revival_script.py"), str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stripped_now"] > 0
    assert result["local_dead_differ"], "the test data should make the processes' own dead sets differ"
    assert result["replicas_equal"]
