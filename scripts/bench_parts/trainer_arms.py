"""The default run: the real trainer in every arm (monitor on, off, sampled, counting kernel, compiled) and a
plain PyTorch loop, in worker processes, rounds interleaved; peak memory; `audit` against a plain forward; the
table of targets."""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import RECIPE, Clock, MonitorTime, _fmt, _peak_memory_mb, _rates, _spread, run_worker

SAMPLE_EVERY = 4  # the sampled arm counts one training step in this many
TRAIN_ARMS = ("on", "off", "plain", f"sample{SAMPLE_EVERY}", "kernel")  # kernel: liveness.counting=compiled
COMPILED_ARMS = ("compiled-on", "compiled-off")
MONITOR_OFF_ARMS = ("off", "compiled-off", "plain")  # plain: its own loop, no trainer config


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
        peak.setdefault("params", sum(p.numel() for p in t.model.parameters()))
        marks.append(clock())
        monitor_at.append(MonitorTime.total)

    trainer.after_train_log.append(mark)
    trainer.before_epoch_end.append(lambda t: peak.setdefault("mb", _peak_memory_mb()))
    trainer.run()
    # a run stopped by max_steps mid-epoch has no epoch end: its high-water mark is read here instead
    peak.setdefault("mb", _peak_memory_mb())
    tokens = cfg.train.log_every * cfg.train.batch_size * cfg.data.block_size
    rate, wall = _rates(marks, tokens)
    window_rates = [tokens / (b[0] - a[0]) for a, b in itertools.pairwise(marks)]
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
        "window_rates": window_rates,
        "params": peak.get("params"),
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
