"""What every part of the bench shares: the clock, peak memory, spreads and rates, the monitor's own time, and
the worker processes that run `scripts/bench.py --worker KIND`."""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "quickstart.yaml"
BENCH = REPO / "scripts" / "bench.py"  # the entry script: a worker is a fresh process of it


# ------------------------------------------------------------------------------------------------ timing


class Clock:
    """Process CPU time on CPU (other jobs on the machine do not count), wall time after a sync on CUDA."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __call__(self) -> tuple[float, float]:
        """(time the figures use, wall time)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            t = time.perf_counter()
            return t, t
        return time.process_time(), time.perf_counter()


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _rates(marks: list[tuple[float, float]], tokens_per_window: int) -> tuple[float, float]:
    """Median tokens/s over the windows between consecutive `marks` (time, wall); the caller leaves out the
    warm-up window."""
    cpu = [tokens_per_window / (b[0] - a[0]) for a, b in itertools.pairwise(marks)]
    wall = [tokens_per_window / (b[1] - a[1]) for a, b in itertools.pairwise(marks)]
    return statistics.median(cpu), statistics.median(wall)


class MonitorTime:
    """Process CPU time spent inside the monitor's own code: the counting in every forward (`_Probe.count`) and
    its per-log work (`counts`, `reset`, the liveness metrics and alerts). Summed over the same windows as the
    step time, it gives the monitor's share of a step measured directly, not as the difference of two runs
    whose own spread (a few percent on a shared CPU) is wider than the 1% target. What it leaves out: the cost
    the counting subclass adds around the module's own forward (a Python call) and cache effects on the model's
    own ops; the A/B figures include those. Counting traced into a compiled model is not timed (a clock call
    would break the graph)."""

    PATCHED = (
        ("reviveformer.liveness", "_Probe", "count"),
        ("reviveformer.liveness", "LivenessMonitor", "counts"),
        ("reviveformer.liveness", "LivenessMonitor", "reset"),
        ("reviveformer.loop.liveness_log", "LivenessLog", "log"),
    )
    total = 0.0
    installed = False

    @classmethod
    def install(cls) -> None:
        import importlib

        if cls.installed:
            return
        for module, owner, name in cls.PATCHED:
            klass = getattr(importlib.import_module(module), owner)
            setattr(klass, name, cls._timed(getattr(klass, name)))
        cls.installed = True

    @classmethod
    def _timed(cls, fn):
        import torch

        def timed(*args, **kwargs):
            # traced into a compiled graph: a clock call there would break it
            if torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cls.total += time.process_time() - t

        return timed


def run_worker(kind: str, tmp: str, **kw) -> dict:
    cmd = [sys.executable, str(BENCH), "--worker", kind, "--tmp", tmp]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}"] + ([str(v)] if v != "" else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"worker {kind} {kw} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block: int) -> int:
    """Training FLOPs per token, PaLM (Chowdhery et al. 2022) appendix B: 6 N (forward 2N, backward 4N; N every
    parameter, the tied embedding once, as the LM head's matmul; the position table is a lookup but counted, as
    the bench always has: 0.6% of N at 124M) plus 12 L T d for the attention scores and their use over the full
    T x T square (the causal half is not discounted)."""
    return 6 * n_params + 12 * n_layer * n_embd * block


def _fmt(s: dict, kind: str = "pct") -> str:
    f = (lambda v: f"{v:+.2%}") if kind == "pct" else (lambda v: f"{v:.3f}")
    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"
