"""Stripping under 2 processes: every process makes the same decision (from reduced counts), so the
replicas stay identical, even though the processes' own counts would have chosen differently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, free_port


@pytest.mark.slow
def test_replicas_identical_after_a_strip(tmp_path):
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(REPO / "tests" / "dist_revival_script.py"),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["stripped_now"] > 0
    assert result["local_dead_differ"], "the test data should make the processes' own dead sets differ"
    assert result["replicas_equal"]
