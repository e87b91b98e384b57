"""--real-run: the monitor's cost as a user sees it. `reviveformer train` of the quickstart recipe for a fixed
number of steps, monitor on against off, each run a fresh process of the real command (its own imports, data
preparation from the cache, W&B off), rounds interleaved (on first in even rounds, off first in odd ones).

A run's figure is what its own log says: the median `train/tokens_per_s` of its train logs after the first
(warm-up) window, in wall time, at the torch threads the command picks itself (the machine's cores). A round's
overhead is off's rate over on's, minus 1; the figure is the median over rounds with min and max. The isolated
share in the default mode reads lower than this (it leaves out what the counting costs the model's own ops
around it: the counting subclass's Python call, caches), which is why this arm exists."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import RECIPE, _spread

ARMS = ("on", "off")


def real_overrides(out: Path, steps: int, arm: str) -> list[str]:
    """The quickstart recipe as a user runs it, for `steps` steps, the monitor on or off."""
    o = [
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.progress=false",
        "wandb.mode=disabled",
        f"liveness.enabled={arm == 'on'}",
    ]
    if arm == "off":
        o.append("alerts.rules=[]")  # the recipe's alert reads liveness metrics: refused without them
    return o


def _one_run(out: Path, steps: int, arm: str) -> float:
    """Median logged tokens/s after the warm-up window of one fresh `reviveformer train` process."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "reviveformer", "train", str(RECIPE), *real_overrides(out, steps, arm)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"real run ({arm}) failed:\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r]
    if len(rates) < 3:
        raise SystemExit(f"--real-steps={steps} gives {len(rates)} train logs; give at least 3 log windows")
    return statistics.median(rates[1:])


def run_real(steps: int, rounds: int) -> dict:
    """Both arms in `rounds` interleaved rounds; the overhead per round and its spread."""
    rates: dict[str, list[float]] = {a: [] for a in ARMS}
    overhead: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            got = {}
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                got[arm] = _one_run(Path(tmp) / f"{arm}-{r}", steps, arm)
                rates[arm].append(got[arm])
                print(f"  round {r + 1}/{rounds} {arm}: {got[arm]:,.0f} tokens/s", flush=True)
            overhead.append(got["off"] / got["on"] - 1)
    return {
        "real/steps": steps,
        "real/on/tokens_per_s": rates["on"],
        "real/off/tokens_per_s": rates["off"],
        "real/monitor_overhead": _spread(overhead),
    }
