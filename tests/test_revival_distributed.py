"""Stripping under 2 processes: every process makes the same decision (from reduced counts), so the
replicas stay identical, even though the processes' own counts would have chosen differently."""

from __future__ import annotations

import pytest

from conftest import launch_findings


@pytest.mark.slow
def test_replicas_identical_after_a_strip(tmp_path):
    result = launch_findings("dist_revival_script.py", tmp_path / "out.json")
    assert result["stripped_now"] > 0
    assert result["local_dead_differ"], "the test data should make the processes' own dead sets differ"
    assert result["replicas_equal"]
