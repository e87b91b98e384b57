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


@pytest.mark.parametrize("arm", ["on", "off", "sample4", "compiled-on", "compiled-off"])
def test_every_trainer_arm_config_loads(arm, tmp_path):
    cfg = load_config(bench.RECIPE, bench._overrides(tmp_path / arm, 8, arm, ["train.log_every=4"]))
    assert cfg.liveness.enabled == (arm != "off" and arm != "compiled-off")
    assert cfg.train.compile == arm.startswith("compiled")
    if arm == "sample4":
        assert cfg.liveness.sample_every == 4
