"""examples/plain_loop.py and examples/accelerate_loop.py run at tiny size: exit 0, one line per revival, and a
printed dead ratio that is a number in [0, 1]."""

from __future__ import annotations

import re

import pytest

from conftest import REPO, launch

LINE = re.compile(r"^step (\d+) dead_ratio (\S+) (dormant_units|stripped) (\d+)$", re.M)


def check(out: str, steps: list[int]) -> None:
    found = LINE.findall(out)
    assert [int(s) for s, *_ in found] == steps, out[-2000:]
    for _, ratio, _, _ in found:
        assert 0.0 <= float(ratio) <= 1.0


def test_plain_loop() -> None:
    p = launch(
        str(REPO / "examples" / "plain_loop.py"), ["--steps", "4", "--every", "2"], 1, accelerate=False
    )
    assert p.returncode == 0, p.stderr[-2000:]
    check(p.stdout, [2, 4])


@pytest.mark.parametrize("processes", [1, 2])
def test_accelerate_loop(processes) -> None:
    p = launch(str(REPO / "examples" / "accelerate_loop.py"), ["--steps", "4", "--every", "2"], processes)
    assert p.returncode == 0, p.stderr[-2000:]
    check(p.stdout, [2, 4])  # printed by the main process only
