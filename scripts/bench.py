"""Benchmark of the liveness monitor's cost: every figure a ratio of arms measured side by side, interleaved.

    .venv/bin/python scripts/bench.py                  # the issue-12 targets at the quickstart size (<= 6 min, 2 cores)
    .venv/bin/python scripts/bench.py --scaling        # eager and compiled overhead at widths 128/256/512, 4 vs 8 layers
    .venv/bin/python scripts/bench.py --gpu            # GPT-2 124M, bf16, on one GPU (<= 8 min on an H100)
    .venv/bin/python scripts/bench.py --gpu --tiny     # the same code at a tiny size, runnable on CPU
    .venv/bin/python scripts/bench.py --gpu --alone    # plain and monitor arms each alone in its own process

Default mode: `--processes` worker processes each run the real trainer in every arm (monitor on, off,
`liveness.sample_every=4`, `liveness.counting=compiled` (the counting kernel in the eager model; compiled on
its first forward, in the warm-up window), and a plain PyTorch loop on the same model, data and AdamW settings) for
`--rounds` rounds, the arm order rotated from round to round and process to process. Each arm run is timed
per log window (`train.log_every` steps, the log's own cost included, through the trainer's public
`after_train_log` hook); its figure is the median window after the first (warm-up). A ratio is taken
between the arms of one round (paired), and the table shows the median ratio over rounds with its min and
max. Worker processes run side by side, one per core's worth of `--threads`. On CPU the windows are timed in process CPU time at `--threads` torch threads (1 by default): with other
jobs on the machine, wall time measures them as much as us; the wall-time figures are printed beside.
The monitor's own CPU share: in the same runs, the process CPU time spent inside the monitor's code (the
counting in every forward, its per-log work) over the timed windows' time (see `MonitorTime`), a direct
measurement as precise as the target, beside the A/B overheads, whose spread on a shared CPU is wider.
Peak memory: one short monitor-on and one monitor-off process (peak RSS, or CUDA peak allocated, up to the
epoch end, read through the trainer's `before_epoch_end` hook). Audit: `measure_saved` against a plain
`no_grad` loop doing the same forward and the same summed next-token cross-entropy, same batches, both
warmed, alternating which goes first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"
SAMPLE_EVERY = 4  # the sampled arm counts one training step in this many
TRAIN_ARMS = ("on", "off", "plain", f"sample{SAMPLE_EVERY}", "kernel")  # kernel: liveness.counting=compiled
COMPILED_ARMS = ("compiled-on", "compiled-off")
MONITOR_OFF_ARMS = ("off", "compiled-off", "plain")  # plain: its own loop, no trainer config
SCALING = ((4, 128), (4, 256), (4, 512), (8, 128))  # (n_layer, n_embd)
# dense bf16 peak FLOP/s for MFU, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


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


# ------------------------------------------------------------------------------------------------ trainer arms


def _overrides(out: Path, steps: int, arm: str, extra: list[str]) -> list[str]:
    import torch

    o = [
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.progress=false",
        "wandb.mode=disabled",
        "train.epochs=1",
        "train.eval_batches=2",
        f"liveness.enabled={arm not in MONITOR_OFF_ARMS}",
        f"train.compile={arm.startswith('compiled')}",
        *extra,
    ]
    if torch.cuda.is_available():
        o.append("train.mixed_precision=bf16")
    if arm == "kernel":
        o.append("liveness.counting=compiled")  # compiled on its first forward, inside the warm-up window
    if arm.startswith("sample"):
        o.append(f"liveness.sample_every={int(arm[len('sample') :])}")
    if "liveness.enabled=False" in o:
        o.append("alerts.rules=[]")  # the recipe's alert reads liveness metrics: refused without them
    return o


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
        ("reviveformer.trainer", "Trainer", "_log_liveness"),
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


def run_trainer_arm(arm: str, out: Path, steps: int, extra: list[str], clock: Clock) -> dict:
    """The real trainer for `steps` optimizer steps; a time mark after each train log (so the window before
    the first log, warm-up, is left out)."""
    from reviveformer.config import load_config
    from reviveformer.trainer import Trainer

    cfg = load_config(RECIPE, _overrides(out, steps, arm, extra))
    trainer = Trainer(cfg)
    marks: list[tuple[float, float]] = []
    monitor_at: list[float] = []  # MonitorTime.total at each mark
    peak: dict = {}

    def mark(t) -> None:
        marks.append(clock())
        monitor_at.append(MonitorTime.total)

    trainer.after_train_log.append(mark)
    trainer.before_epoch_end.append(lambda t: peak.setdefault("mb", _peak_memory_mb()))
    trainer.run()
    # a run stopped by max_steps mid-epoch has no epoch end: its high-water mark is read here instead
    peak.setdefault("mb", _peak_memory_mb())
    tokens = cfg.train.log_every * cfg.train.batch_size * cfg.data.block_size
    rate, wall = _rates(marks, tokens)
    share = None
    # host time means nothing on CUDA, and counting inside a compiled graph is not timed
    if not clock.cuda and cfg.liveness.enabled and not cfg.train.compile and len(marks) > 1:
        share = (monitor_at[-1] - monitor_at[0]) / (marks[-1][0] - marks[0][0])
    return {
        "tokens_per_s": rate,
        "wall_tokens_per_s": wall,
        "monitor_share": share,
        "peak_mb": peak.get("mb"),
        "final": str(out / "final"),
    }


def run_plain_arm(steps: int, extra: list[str], clock: Clock) -> dict:
    """The same GPT2LMHeadModel, data and AdamW settings in a plain PyTorch loop: no Accelerate, no monitor;
    one `loss.item()` per window, the one sync that logging costs."""
    import torch
    from torch.utils.data import DataLoader

    from reviveformer.config import load_config
    from reviveformer.data import prepare_data
    from reviveformer.model import build_model
    from reviveformer.trainer import param_groups, warmup_cosine

    cfg = load_config(RECIPE, extra)
    torch.manual_seed(cfg.train.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare_data(cfg.data, cfg.train.seed)
    model = build_model(cfg.model, len(data.tokenizer), data.tokenizer.eos_token_id).to(dev).train()
    betas = (cfg.train.adam_beta1, cfg.train.adam_beta2)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=betas, eps=cfg.train.adam_eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.train.warmup_steps, steps, 0.1))
    loader = DataLoader(data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    marks = [clock()]
    for step, batch in enumerate(loader, start=1):
        ids = batch["input_ids"].to(dev)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.train.log_every == 0:
            loss.item()
            marks.append(clock())
        if step >= steps:
            break
    rate, wall = _rates(marks[1:], cfg.train.log_every * cfg.train.batch_size * cfg.data.block_size)
    return {"tokens_per_s": rate, "wall_tokens_per_s": wall}


def worker_arms(args) -> dict:
    """`args.rounds` rounds of the arms in `args.arms`, the order rotated by one each round."""
    import torch

    torch.set_num_threads(args.threads)
    clock = Clock(torch.cuda.is_available())
    arms = args.arms.split(",")
    MonitorTime.install()
    runs: list[dict] = []
    for r in range(args.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in order:
            out = Path(args.tmp) / f"{arm}-{os.getpid()}-{r}"
            extra = [f"train.log_every={args.log_every}"]
            res = (
                run_plain_arm(args.steps, extra, clock)
                if arm == "plain"
                else run_trainer_arm(arm, out, args.steps, extra, clock)
            )
            runs.append({"round": r, "arm": arm, **res})
    return {"runs": runs}


def worker_peak(args) -> dict:
    """Peak memory of one short run of one arm (its own process: peak RSS is a high-water mark)."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.tmp) / f"peak-{args.arms}-{os.getpid()}"
    return run_trainer_arm(
        args.arms, out, args.steps, [f"train.log_every={args.log_every}"], Clock(torch.cuda.is_available())
    )


def worker_audit(args) -> dict:
    """`audit`'s measurement (`measure_saved`) vs a plain no_grad loop with the same forward and the same
    summed, shifted cross-entropy over the same batches (batch 16); both warmed, the first alternating."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from reviveformer.saved_model import measure_saved, measurement_data, open_saved_model

    torch.set_num_threads(args.threads)
    clock = Clock(torch.cuda.is_available())
    acc = Accelerator()
    saved = open_saved_model(args.final, [])
    data = measurement_data(saved, "validation")  # data preparation is timed by neither side
    n_tokens = len(data) * saved.cfg.data.block_size
    plain_model = open_saved_model(args.final, []).model.to(acc.device).eval()
    saved = open_saved_model(args.final, [])  # measure_saved installs its monitor and closes it each time

    def audit() -> None:
        measure_saved(saved, acc, "validation", 16, progress_desc="audit", dataset=data)

    @torch.no_grad()
    def plain() -> None:
        total = torch.zeros((), dtype=torch.float64, device=acc.device)
        for batch in DataLoader(data, batch_size=16):
            ids = batch["input_ids"].to(acc.device)
            logits = plain_model(input_ids=ids).logits
            labels = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -100)], dim=1)
            total += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                reduction="sum",
                ignore_index=-100,
            ).double()
        total.item()

    shares = []

    def timed(fn) -> tuple[float, float]:
        m, a = MonitorTime.total, clock()
        fn()
        b = clock()
        if fn is audit:
            shares.append((MonitorTime.total - m) / (b[0] - a[0]))
        return b[0] - a[0], b[1] - a[1]

    MonitorTime.install()
    audit(), plain()  # warm-up: first-call costs belong to neither side
    ratios, wall_ratios = [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            t_audit, t_plain = timed(audit), timed(plain)
        else:
            t_plain, t_audit = timed(plain), timed(audit)
        ratios.append(t_plain[0] / t_audit[0])  # = audit rate / plain rate over the same tokens
        wall_ratios.append(t_plain[1] / t_audit[1])
    return {"ratios": ratios, "wall_ratios": wall_ratios, "tokens": n_tokens, "monitor_shares": shares}


# ------------------------------------------------------------------------------------------------ in-process loops


def _gpt2(n_layer: int, n_embd: int, block: int, vocab: int, dev):
    from transformers import GPT2Config, GPT2LMHeadModel

    from reviveformer.model import CAUSAL_LM_LOSS

    cfg = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(1, n_embd // 64),
        n_positions=block,
        vocab_size=vocab,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    model.loss_type = CAUSAL_LM_LOSS
    return model.to(dev).train()


class LoopArm:
    """One arm of an in-process loop: its own model (same seed), AdamW, optionally a monitor and compile."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, int, int, int],
        dev,
        monitor: str | None,
        compiled: bool,
        bf16: bool,
        log_every: int,
    ) -> None:
        import torch

        from reviveformer.config import LivenessConfig
        from reviveformer.liveness import LivenessMonitor

        self.name, self.log_every, self.steps, self.bf16 = name, log_every, 0, bf16
        torch.manual_seed(0)
        self.model = _gpt2(*shape, dev)
        self.monitor = LivenessMonitor(self.model, LivenessConfig(counting=monitor)) if monitor else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        self.forward = torch.compile(self.model) if compiled else self.model
        self.times: list[float] = []
        self.walls: list[float] = []
        self.peaks_mb: list[float] = []  # CUDA: peak allocated during each of this arm's chunks
        self.monitor_times: list[float] = []  # MonitorTime during each chunk (0 where nothing is timed)

    def step(self, ids) -> None:
        import torch

        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.forward(input_ids=ids, labels=ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        if self.steps % self.log_every == 0:
            loss.item()
            if self.monitor is not None:  # the per-log report: one flat tensor to the host, the scalars
                self.monitor.counts().metrics()
                self.monitor.reset()


def interleaved(
    arms: list[LoopArm], ids, warmup: int, rounds: int, steps: int, clock: Clock
) -> dict[str, list[float]]:
    """Warm every arm, then `rounds` rounds of `steps` steps per arm (order rotated each round); returns the
    time of each arm's chunk, per round."""
    import torch

    cuda = ids.device.type == "cuda"
    for arm in arms:
        for _ in range(warmup):
            arm.step(ids)
    for r in range(rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            m, a = MonitorTime.total, clock()
            for _ in range(steps):
                arm.step(ids)
            b = clock()
            arm.times.append(b[0] - a[0])
            arm.walls.append(b[1] - a[1])
            arm.monitor_times.append(MonitorTime.total - m)
            if cuda:
                arm.peaks_mb.append(torch.cuda.max_memory_allocated() / 2**20)
    return {arm.name: arm.times for arm in arms}


def overheads(times: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """Per figure, the spread over rounds of time(arm) / time(base) - 1 (paired within each round)."""
    return {
        name: _spread([a / b - 1 for a, b in zip(times[arm], times[base], strict=True)])
        for name, (arm, base) in pairs.items()
    }


def run_scaling(args) -> dict:
    """Eager and compiled monitor overhead per width and depth: model forward/backward + AdamW at batch 16 x
    128, no data loading; arms: off, eager counting, the compiled counting kernel in an eager model, and
    compiled models with the monitor off and on."""
    import torch

    torch.set_num_threads(args.threads)
    clock, dev = Clock(False), torch.device("cpu")
    ids = torch.randint(0, 4096, (16, 128), generator=torch.Generator().manual_seed(0))
    MonitorTime.install()
    rows = []
    for n_layer, n_embd in SCALING:
        shape = (n_layer, n_embd, 128, 4096)
        arms = [
            LoopArm("off", shape, dev, None, False, False, 10),
            LoopArm("eager", shape, dev, "eager", False, False, 10),
            LoopArm("kernel", shape, dev, "compiled", False, False, 10),
        ]
        if not args.no_compile:
            arms += [
                LoopArm("compiled-off", shape, dev, None, True, False, 10),
                LoopArm("compiled-on", shape, dev, "auto", True, False, 10),
            ]
        times = interleaved(
            arms, ids, warmup=3, rounds=args.scaling_rounds, steps=args.log_every, clock=clock
        )
        pairs = {"eager": ("eager", "off"), "kernel": ("kernel", "off")}
        if not args.no_compile:
            pairs["compiled"] = ("compiled-on", "compiled-off")
        # the monitor's own share of its arm's time, per round (eager models: the counting is timed there)
        share = {
            a.name: _spread([m / t for m, t in zip(a.monitor_times, a.times, strict=True)])
            for a in arms
            if a.name in ("eager", "kernel")
        }
        rows.append(
            {
                "n_layer": n_layer,
                "n_embd": n_embd,
                "overhead": overheads(times, pairs),
                "monitor_share": share,
            }
        )
        print(
            f"  {n_layer} x {n_embd}: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in rows[-1]["overhead"].items())
            + "; monitor's own share: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in share.items()),
            flush=True,
        )
    return {
        "scaling": rows,
        "threads": args.threads,
        "rounds": args.scaling_rounds,
        "steps_per_round": args.log_every,
    }


def check_counts(shape: tuple[int, int, int, int], ids, bf16: bool) -> dict:
    """The monitor's counts (liveness.counting=auto: the compiled kernel on CUDA) after one forward, against
    counts taken by hand from the same activations (forward hooks, float64 compare): fire counts must be
    equal, |a| sums equal to float32 rounding."""
    import torch

    from reviveformer import gpt2
    from reviveformer.config import LivenessConfig
    from reviveformer.liveness import LivenessMonitor
    from reviveformer.sites import get_site

    torch.manual_seed(0)
    model = _gpt2(*shape, ids.device)
    cfg = LivenessConfig(counting="auto")
    monitor = LivenessMonitor(model, cfg)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(gpt2.blocks(model)):
        for site in monitor.sites:
            info = get_site(site)

            def hook(mod, args, out, site=site, i=i, reads=info.reads):
                a = args[0] if reads == "input" else out
                seen[(site, i)] = a.detach().reshape(-1, a.shape[-1])

            hooks.append(gpt2.block_module(block, info.module, i).register_forward_hook(hook))
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=ids, labels=ids).loss.backward()
    counts = monitor.counts()
    worst_fire, worst_rel = 0, 0.0
    dtype = str(next(iter(seen.values())).dtype) if seen else "-"
    for (site, i), a in seen.items():
        a = a.double()  # bf16 and float32 values are exact in float64: the compare is the exact one
        fire = (a.abs() > cfg.threshold).sum(dim=0).cpu().numpy()
        abs_sum = a.abs().sum(dim=0).cpu().numpy()
        worst_fire = max(worst_fire, int(abs(counts.fire_count[site][i] - fire).max()))
        scale = max(float(abs_sum.max()), 1e-30)
        worst_rel = max(worst_rel, float(abs(counts.abs_sum[site][i] - abs_sum).max()) / scale)
        assert counts.tokens[site][i] == a.shape[0], (site, i)
    for h in hooks:
        h.remove()
    monitor.close()
    return {
        "fire_count_max_abs_diff": worst_fire,
        "abs_sum_max_rel_diff": worst_rel,
        "exact": worst_fire == 0 and worst_rel < 1e-5,
        "site_tensors": len(seen),
        "activation_dtype": dtype,
    }


def run_gpu(args) -> dict:
    """GPT-2 124M (12 x 768, block 1024, vocab 50257; --tiny: 2 x 64, block 32), random tokens, AdamW, bf16
    on CUDA: a plain loop vs the same loop with the monitor (its per-log report included), eager and compiled;
    first, the monitor's counts on this device against counts by hand. The JSON is rewritten after each part,
    so a run cut short still leaves what it measured."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    shape, batch = _gpu_shape(args)
    steps, rounds, warmup = (2, 2, 1) if args.tiny else (args.gpu_steps, args.gpu_rounds, 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    ids = torch.randint(
        0, shape[3], (batch, shape[2]), device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    clock = Clock(cuda)
    results: dict = {
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "torch": torch.__version__,
        "shape": shape,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
    }
    save = lambda: Path(args.json).write_text(json.dumps(results, indent=1))  # noqa: E731
    results["counts_check"] = check_counts(shape, ids, cuda)
    print(f"counts on {results['device']} vs by hand: {results['counts_check']}", flush=True)
    save()
    for compiled in (False, True):
        t0 = time.perf_counter()
        arms = [
            LoopArm("plain", shape, dev, None, compiled, cuda, 10),
            LoopArm("monitor", shape, dev, "auto", compiled, cuda, 10),
        ]
        if not compiled:  # liveness.counting=auto picks the compiled kernel on CUDA: the eager ops beside it
            arms.append(LoopArm("monitor-eager-ops", shape, dev, "eager", False, cuda, 10))
        times = interleaved(arms, ids, warmup=warmup, rounds=rounds, steps=steps, clock=clock)
        n_params = sum(p.numel() for p in arms[0].model.parameters())
        tokens = steps * batch * shape[2]
        n_layer, n_embd, block = shape[0], shape[1], shape[2]
        flops_per_token = 6 * n_params + 12 * n_layer * n_embd * block  # PaLM appendix B (attention included)
        peak = next((v for k, v in PEAK_BF16.items() if cuda and k in results["device"]), None)
        kind = "compiled" if compiled else "eager"
        for arm in arms:
            rate = tokens / statistics.median(arm.times)
            results[f"{kind}/{arm.name}/tokens_per_s"] = rate
            results[f"{kind}/{arm.name}/mfu"] = rate * flops_per_token / peak if peak else None
            results[f"{kind}/{arm.name}/peak_mb"] = max(arm.peaks_mb) if arm.peaks_mb else None
        results[f"{kind}/monitor_overhead"] = overheads(times, {"o": ("monitor", "plain")})["o"]
        if not compiled:
            results["eager/monitor_eager_ops_overhead"] = overheads(
                times, {"o": ("monitor-eager-ops", "plain")}
            )["o"]
        results["params"] = n_params
        results[f"{kind}/wall_s"] = time.perf_counter() - t0
        save()
        print(f"{kind} arms done in {results[f'{kind}/wall_s']:.0f}s", flush=True)
        del arms
        if cuda:
            torch.cuda.empty_cache()
    return results


def _gpu_shape(args) -> tuple[tuple[int, int, int, int], int]:
    """((n_layer, n_embd, block, vocab), batch) of the --gpu arms."""
    shape = (2, 64, 32, 4096) if args.tiny else (12, 768, 1024, 50257)
    return shape, args.batch or (4 if args.tiny else 8)


def worker_gpu_alone(args) -> dict:
    """One arm (`args.arms`: plain or monitor) alone in this process, eager then compiled: ms/step over
    `args.gpu_rounds` chunks of `args.gpu_steps` steps, after 5 warm-up steps, a log (with the monitor, its
    report) every `args.gpu_log_every` steps."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    shape, batch = _gpu_shape(args)
    ids = torch.randint(
        0, shape[3], (batch, shape[2]), device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    clock = Clock(cuda)
    out = {}
    for compiled in (False, True):
        monitor = "auto" if args.arms == "monitor" else None
        arm = LoopArm(args.arms, shape, dev, monitor, compiled, cuda, args.gpu_log_every)
        interleaved([arm], ids, warmup=5, rounds=args.gpu_rounds, steps=args.gpu_steps, clock=clock)
        out["compiled" if compiled else "eager"] = [t / args.gpu_steps * 1000 for t in arm.times]
        del arm
    return out


def run_gpu_alone(args) -> dict:
    """The --gpu plain and monitor arms each alone in a process of its own (as in a real run: one model, one
    compiled graph per process), alternating plain, monitor, plain, monitor; ms/step medians per arm."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"plain": [], "monitor": []}
        for rep in range(2):
            for arm in ("plain", "monitor"):
                kw = {
                    "arms": arm,
                    "gpu_rounds": args.gpu_rounds,
                    "gpu_steps": args.gpu_steps,
                    "gpu_log_every": args.gpu_log_every,
                }
                r = run_worker(
                    "gpu-alone", tmp, **kw, batch=args.batch, **({"tiny": ""} if args.tiny else {})
                )
                runs[arm].append(r)
                print(
                    f"  {arm} process {rep + 1}: ms/step eager "
                    + " ".join(f"{x:.2f}" for x in r["eager"])
                    + ", compiled "
                    + " ".join(f"{x:.2f}" for x in r["compiled"]),
                    flush=True,
                )
    res: dict = {"runs": runs}
    for kind in ("eager", "compiled"):
        med = {a: statistics.median(x for r in runs[a] for x in r[kind]) for a in runs}
        res[f"{kind}/ms_per_step"] = med
        res[f"{kind}/monitor_overhead"] = med["monitor"] / med["plain"] - 1
    return res


# ------------------------------------------------------------------------------------------------ driver


def run_worker(kind: str, tmp: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tmp", tmp]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}"] + ([str(v)] if v != "" else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"worker {kind} {kw} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _fmt(s: dict, kind: str = "pct") -> str:
    f = (lambda v: f"{v:+.2%}") if kind == "pct" else (lambda v: f"{v:.3f}")
    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"


def paired(runs: list[dict], arm: str, base: str, key: str = "tokens_per_s") -> list[float]:
    """rate(arm) / rate(base) within each (process, round)."""
    by = {(r["proc"], r["round"], r["arm"]): r[key] for r in runs}
    return [v / by[(p, rd, base)] for (p, rd, a), v in by.items() if a == arm and (p, rd, base) in by]


def main_targets(args) -> dict:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    common = {"steps": args.steps, "log_every": args.log_every, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {
            p: TRAIN_ARMS[p % len(TRAIN_ARMS) :] + TRAIN_ARMS[: p % len(TRAIN_ARMS)]
            for p in range(args.processes)
        }
        jobs |= {
            f"c{p}": COMPILED_ARMS[p % 2 :] + COMPILED_ARMS[: p % 2] for p in range(args.compiled_processes)
        }
        # as many worker processes at once as there are cores for their threads (on a GPU, one): the arms
        # compared with each other always share a process, so neighbours slow both sides of a ratio alike
        parallel = 1 if torch.cuda.is_available() else max(1, (os.cpu_count() or 1) // args.threads)
        with ThreadPoolExecutor(parallel) as pool:
            done = pool.map(
                lambda job: (
                    job[0],
                    run_worker("arms", tmp, arms=",".join(job[1]), rounds=args.rounds, **common),
                ),
                jobs.items(),
            )
            runs = [{"proc": p, **r} for p, out in done for r in out["runs"]]
        peak = {
            arm: run_worker("peak", tmp, arms=arm, **{**common, "steps": 2 * args.log_every + 1})["peak_mb"]
            for arm in ("on", "off")
        }
        final = next(r["final"] for r in runs if r["arm"] == "on")
        audit = run_worker("audit", tmp, final=final, rounds=args.audit_rounds, threads=args.threads)

    def figure(arm, base, key="tokens_per_s", invert=False):
        v = paired(runs, arm, base, key)
        return _spread([1 - x for x in v] if invert else v) if v else None

    def share(arm):
        v = [r["monitor_share"] for r in runs if r["arm"] == arm and r.get("monitor_share") is not None]
        return _spread(v) if v else None

    res = {
        "device": device,
        **common,
        "rounds": args.rounds,
        "processes": args.processes,
        "clock": "wall (CUDA)"
        if torch.cuda.is_available()
        else f"process CPU time, {args.threads} torch thread(s)",
        "monitor_overhead_eager": figure("on", "off", invert=True),
        "monitor_overhead_sampled": figure(f"sample{SAMPLE_EVERY}", "off", invert=True),
        "monitor_overhead_kernel": figure("kernel", "off", invert=True),
        "monitor_overhead_compiled": figure("compiled-on", "compiled-off", invert=True),
        "monitor_share_eager": share("on"),
        "monitor_share_sampled": share(f"sample{SAMPLE_EVERY}"),
        "monitor_share_kernel": share("kernel"),
        "reviveformer_vs_plain": figure("on", "plain"),
        "reviveformer_off_vs_plain": figure("off", "plain"),
        "reviveformer_kernel_vs_plain": figure("kernel", "plain"),
        "audit_vs_plain_forward": _spread(audit["ratios"]),
        "audit_monitor_share": _spread(audit["monitor_shares"]),
        "memory_increase": peak["on"] / peak["off"] - 1,
        "peak_memory_mb": peak,
        "wall": {
            "monitor_overhead_eager": figure("on", "off", "wall_tokens_per_s", invert=True),
            "reviveformer_vs_plain": figure("on", "plain", "wall_tokens_per_s"),
            "audit_vs_plain_forward": _spread(audit["wall_ratios"]),
        },
        "tokens_per_s": {
            a: statistics.median(r["tokens_per_s"] for r in runs if r["arm"] == a)
            for a in {r["arm"] for r in runs}
        },
    }
    rows = [  # (figure, key, shown as, target: the median must be at most / at least this, or None)
        ("monitor overhead, eager", "monitor_overhead_eager", "pct", ("<=", 0.01)),
        (f"  same, sample_every={SAMPLE_EVERY}", "monitor_overhead_sampled", "pct", ("<=", 0.005)),
        ("  same, counting kernel", "monitor_overhead_kernel", "pct", ("<=", 0.01)),
        ("monitor overhead, compiled", "monitor_overhead_compiled", "pct", ("<=", 0.005)),
        ("monitor's own CPU share, eager", "monitor_share_eager", "pct", ("<=", 0.01)),
        (f"  same, sample_every={SAMPLE_EVERY}", "monitor_share_sampled", "pct", ("<=", 0.005)),
        ("  same, counting kernel", "monitor_share_kernel", "pct", ("<=", 0.01)),
        ("reviveformer step / plain loop", "reviveformer_vs_plain", "ratio", (">=", 0.98)),
        ("  same, monitor off", "reviveformer_off_vs_plain", "ratio", None),
        ("  same, counting kernel", "reviveformer_kernel_vs_plain", "ratio", (">=", 0.98)),
        ("audit / plain no_grad forward", "audit_vs_plain_forward", "ratio", (">=", 0.95)),
        ("  the monitor's own CPU share of it", "audit_monitor_share", "pct", None),
    ]
    print(
        f"device: {device}; clock: {res['clock']}; {args.processes} processes x {args.rounds} rounds of "
        f"{args.steps} steps (windows of {args.log_every}); median [min, max] over rounds"
    )
    print(f"{'figure':<34}{'median [min, max]':>28}  {'target':<9} met")
    res["targets"] = []
    for name, key, kind, bound in rows:
        s = res[key]
        target, met = "-", None
        if bound is not None:
            op, limit = bound
            target = f"{op} " + (f"{limit:.2f}" if kind == "ratio" else f"{limit:.1%}".replace(".0%", "%"))
            if s is not None:
                met = s["median"] <= limit if op == "<=" else s["median"] >= limit
        print(
            f"{name:<34}{('-' if s is None else _fmt(s, kind)):>28}  {target:<9} "
            f"{'-' if met is None else ('yes' if met else 'NO')}"
        )
        res["targets"].append({"figure": name, "value": s, "target": target, "met": met})
    mem_ok = res["memory_increase"] < 0.02
    print(
        f"{'peak memory, monitor on vs off':<34}{res['memory_increase']:>+28.2%}  {'< 2%':<9} {'yes' if mem_ok else 'NO'}"
    )
    w = res["wall"]
    print(
        "wall-time figures: eager overhead "
        + (_fmt(w["monitor_overhead_eager"]) if w["monitor_overhead_eager"] else "-")
        + ", step/plain "
        + (_fmt(w["reviveformer_vs_plain"], "ratio") if w["reviveformer_vs_plain"] else "-")
        + f", audit/plain {_fmt(w['audit_vs_plain_forward'], 'ratio')}"
    )
    print("tokens/s (median): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(res["tokens_per_s"].items())))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2, help="worker processes of the eager arms")
    ap.add_argument(
        "--rounds", type=int, default=2, help="rounds of all arms per process (audit: see --audit-rounds)"
    )
    ap.add_argument(
        "--compiled-processes", type=int, default=1, help="processes of the torch.compile arms (0: skip)"
    )
    ap.add_argument("--steps", type=int, default=36, help="optimizer steps per arm run")
    ap.add_argument("--log-every", type=int, default=4, help="steps per timed window (train.log_every)")
    ap.add_argument("--audit-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    ap.add_argument(
        "--scaling", action="store_true", help="the overhead table over widths and depths instead"
    )
    ap.add_argument("--scaling-rounds", type=int, default=8, help="--scaling rounds per shape")
    ap.add_argument("--no-compile", action="store_true", help="--scaling without the compiled-model arms")
    ap.add_argument("--gpu", action="store_true", help="GPT-2 124M on one GPU instead")
    ap.add_argument("--tiny", action="store_true", help="--gpu at a tiny size (runs on CPU)")
    ap.add_argument("--batch", type=int, default=0, help="--gpu batch size (default 8; --tiny 4)")
    ap.add_argument("--gpu-steps", type=int, default=20, help="--gpu steps per arm and round")
    ap.add_argument("--gpu-rounds", type=int, default=5, help="--gpu rounds of every arm")
    ap.add_argument(
        "--gpu-log-every",
        type=int,
        default=10,
        help="--gpu --alone: steps between logs (the monitor's report); a large value leaves it out",
    )
    ap.add_argument("--json", default="bench.json")
    ap.add_argument(
        "--alone",
        action="store_true",
        help="--gpu: the plain and monitor arms each alone in a process of its own instead",
    )
    ap.add_argument("--worker", choices=["arms", "peak", "audit", "gpu-alone"])
    ap.add_argument("--tmp")
    ap.add_argument("--arms")
    ap.add_argument("--final")
    args = ap.parse_args()
    if args.worker:
        worker = {
            "arms": worker_arms,
            "peak": worker_peak,
            "audit": worker_audit,
            "gpu-alone": worker_gpu_alone,
        }[args.worker]
        print(json.dumps(worker(args)))
        return
    t0 = time.perf_counter()
    if args.gpu and not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs a CUDA device (or --tiny, a small size that runs on CPU)", file=sys.stderr)
            sys.exit(2)
    if args.gpu and args.alone:
        res = run_gpu_alone(args)
        for kind in ("eager", "compiled"):
            med = res[f"{kind}/ms_per_step"]
            print(
                f"{kind}, each arm alone: plain {med['plain']:.2f} ms/step, monitor {med['monitor']:.2f} ms/step, "
                f"overhead {res[f'{kind}/monitor_overhead']:+.2%}"
            )
    elif args.gpu:
        res = run_gpu(args)
        for kind in ("eager", "compiled"):
            o = res[f"{kind}/monitor_overhead"]
            mfu = [res[f"{kind}/{a}/mfu"] for a in ("plain", "monitor")]
            print(
                f"{res['device']} {kind}: plain {res[f'{kind}/plain/tokens_per_s']:,.0f} tokens/s, monitor "
                f"{res[f'{kind}/monitor/tokens_per_s']:,.0f} tokens/s, overhead {_fmt(o)}, monitor/plain "
                f"{1 / (1 + o['median']):.3f}, MFU "
                + (" / ".join(f"{m:.1%}" for m in mfu) if mfu[0] else "-")
            )
        print(
            f"  eager model, liveness.counting=eager: overhead {_fmt(res['eager/monitor_eager_ops_overhead'])}"
        )
        if res["eager/plain/peak_mb"] is not None:
            print(
                "peak allocated MiB (plain / monitor): "
                + ", ".join(
                    f"{kind} {res[f'{kind}/plain/peak_mb']:,.0f} / {res[f'{kind}/monitor/peak_mb']:,.0f}"
                    for kind in ("eager", "compiled")
                )
            )
    elif args.scaling:
        print(
            f"overhead (time with monitor / without - 1), median [min, max] over {args.scaling_rounds} rounds of "
            f"{args.log_every} steps, process CPU time, {args.threads} thread(s):"
        )
        res = run_scaling(args)
    else:
        res = main_targets(args)
    res["wall_s"] = time.perf_counter() - t0
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"wall {res['wall_s']:.0f}s; JSON: {args.json}")


if __name__ == "__main__":
    main()
