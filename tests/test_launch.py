"""conftest.launch: a launch that hangs fails its test and leaves no worker behind. (torch's elastic
agent starts workers in sessions of their own; once a kill of the launcher's group missed them, and the
orphaned worker held the output pipe open, so the suite waited for ever.)"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import launch

TIMEOUT = 120  # s; only a launch whose workers never start waits it out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_hung_launch_fails_and_leaves_no_worker(tmp_path):
    with ThreadPoolExecutor(1) as pool:
        # the workers block for ever once they have written their pids: that moment is the hang, made explicit
        def both_started() -> bool:  # a pid file is written in one write: not empty means complete
            return [bool(p.read_text()) for p in tmp_path.glob("*.pid")] == [True, True]

        hung = pool.submit(launch, "dist_hang_script.py", [str(tmp_path)], timeout=TIMEOUT, hung=both_started)
        try:
            with pytest.raises(pytest.fail.Exception, match="dist_hang_script.py.* hung:"):
                hung.result(timeout=TIMEOUT + 60)  # without the tree kill, this waited for ever
        finally:
            pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
            deadline = time.monotonic() + 20  # a killed orphan is reaped by init, not at once
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [p for p in pids if _alive(p)]
            for pid in left:  # never leave one behind, whatever the outcome
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert len(pids) == 2, "both workers should have started within the timeout"
    assert left == [], f"workers still running after the launch failed: {left}"
