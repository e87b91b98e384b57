"""scripts/bench.py: every arm's trainer config loads (the bench is not run by the suite; a config the
trainer refuses would only show when someone runs it)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO
from reviveformer.config import load_config

spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


TRAINER_ARMS = [a for a in (*bench.TRAIN_ARMS, *bench.COMPILED_ARMS) if a != "plain"]


def test_the_arms_are_the_ones_named_here():
    # the checks below spell out each arm's settings: a new arm must be added to them
    assert sorted(TRAINER_ARMS) == ["compiled-off", "compiled-on", "kernel", "off", "on", "sample4"]


@pytest.mark.parametrize("arm", TRAINER_ARMS)
def test_every_trainer_arm_config_loads(arm, tmp_path):
    cfg = load_config(bench.RECIPE, bench._overrides(tmp_path / arm, 8, arm, ["train.log_every=4"]))
    assert cfg.liveness.enabled == (arm not in ("off", "compiled-off"))
    assert cfg.train.compile == arm.startswith("compiled")
    assert cfg.liveness.sample_every == (4 if arm == "sample4" else 1)
    assert cfg.liveness.counting == ("compiled" if arm == "kernel" else "auto")
    assert cfg.alerts.rules == [] or cfg.liveness.enabled  # alerts read liveness metrics
