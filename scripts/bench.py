"""Benchmark: every figure a ratio measured side by side in one run, interleaved, median of repeats.

    .venv/bin/python scripts/bench.py [--repeats 3] [--steps 60] [--compiled-repeats 1] [--json bench.json]

Each measurement runs in its own worker process (so peak memory is per arm), in the order on, off, plain,
on, off, plain, ... Targets (issue 6): monitor overhead < 3% eager and < 1% compiled; reviveformer's step
vs a plain loop >= 0.97; epoch-end revival < 2% of the epoch; audit vs a plain no_grad forward >= 0.9;
peak memory with the monitor < 5% more. Runs on CUDA (bf16) when a GPU is present, on CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 4  # the sampled arm counts one training step in this many
RECIPE = REPO / "recipes" / "quickstart.yaml"


# ------------------------------------------------------------------------------------------------ workers


def _device_overrides() -> list[str]:
    import torch

    return ["train.mixed_precision=bf16"] if torch.cuda.is_available() else []


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_before_epoch_end() -> dict:
    """Peak memory up to the end of the training steps: the epoch-end plots (matplotlib, on the monitor-on
    arm only) are not the monitor's cost. Recorded by wrapping Trainer._epoch_end."""
    from reviveformer.trainer import Trainer

    seen: dict = {}
    original = Trainer._epoch_end

    def wrapped(self, epoch):
        seen.setdefault("peak_mb", _peak_memory_mb())
        return original(self, epoch)

    Trainer._epoch_end = wrapped
    return seen


def _rates(metrics_path: Path) -> list[float]:
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    return [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r]


def worker_train(args) -> dict:
    """The real trainer for `steps` optimizer steps; tokens/s of each log window after the first."""
    from reviveformer.config import load_config
    from reviveformer.trainer import train

    out = Path(args.tmp) / f"train-{args.monitor}-{args.compile}-{os.getpid()}"
    overrides = [f"train.output_dir={out}", f"train.max_steps={args.steps}", "train.progress=false",
                 "wandb.mode=disabled", f"liveness.enabled={args.monitor != 'off'}", f"train.compile={args.compile == 'on'}",
                 "train.epochs=1", *_device_overrides()]
    if args.monitor.startswith("sample"):  # "sample4": count one training step in four
        overrides.append(f"liveness.sample_every={int(args.monitor[len('sample'):])}")
    peak = _peak_before_epoch_end()
    train(load_config(RECIPE, overrides))
    rates = _rates(out / "metrics.jsonl")[1:]  # the first window holds warm-up (and compilation)
    return {"tokens_per_s": statistics.median(rates), "peak_mb": peak["peak_mb"], "final": str(out / "final")}


def worker_plain(args) -> dict:
    """The same GPT2LMHeadModel, data and AdamW settings in a plain PyTorch loop: no Accelerate, no monitor."""
    import torch
    from torch.utils.data import DataLoader

    from reviveformer.config import load_config
    from reviveformer.data import prepare_data
    from reviveformer.model import build_model
    from reviveformer.trainer import param_groups, warmup_cosine

    cfg = load_config(RECIPE, [])
    torch.manual_seed(cfg.train.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare_data(cfg.data, cfg.train.seed)
    model = build_model(cfg.model, len(data.tokenizer), data.tokenizer.eos_token_id).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.train.warmup_steps, args.steps, 0.1))
    loader = DataLoader(data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    window, rates, t, tokens = cfg.train.log_every, [], time.perf_counter(), 0
    for step, batch in enumerate(loader, start=1):
        ids = batch["input_ids"].to(dev)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
        if step % window == 0:
            loss.item()  # the same one sync per window that logging costs
            now = time.perf_counter()
            rates.append(tokens / (now - t))
            t, tokens = now, 0
        if step >= args.steps:
            break
    return {"tokens_per_s": statistics.median(rates[1:]), "peak_mb": _peak_memory_mb()}


def worker_revival(args) -> dict:
    """One whole epoch with synaptic stripping at its end: revival time over the epoch's training time."""
    from reviveformer.config import load_config
    from reviveformer.trainer import train

    out = Path(args.tmp) / f"revival-{os.getpid()}"
    tokens = args.steps * 16 * 128  # one epoch of about `steps` steps at the quickstart's batch and block
    train(load_config(RECIPE, [f"train.output_dir={out}", "train.progress=false", "wandb.mode=disabled",
                               "train.epochs=1", f"data.max_tokens={tokens}", "revival.method=synaptic_stripping",
                               *_device_overrides()]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epoch_s = next(r["train/epoch_seconds"] for r in rows if "train/epoch_seconds" in r)
    revival_s = next(r["revival/seconds"] for r in rows if "revival/seconds" in r)
    return {"revival_s": revival_s, "epoch_s": epoch_s, "fraction": revival_s / epoch_s}


def worker_audit(args) -> dict:
    """`audit`'s measurement vs a plain torch.no_grad forward over the same validation blocks, interleaved."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from reviveformer.saved_model import measure_saved, measurement_data, open_saved_model

    acc = Accelerator()
    ratios = []
    for _ in range(args.repeats):
        saved = open_saved_model(args.final, [])
        data = measurement_data(saved, "validation")  # data preparation is timed by neither side
        n_tokens = len(data) * saved.cfg.data.block_size
        t = time.perf_counter()
        measure_saved(saved, acc, "validation", 16, progress_desc="audit", dataset=data)
        audit_rate = n_tokens / (time.perf_counter() - t)

        model = open_saved_model(args.final, []).model.to(acc.device).eval()
        t = time.perf_counter()
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=16):
                model(input_ids=batch["input_ids"].to(acc.device)).logits.float().sum().item()
        plain_rate = n_tokens / (time.perf_counter() - t)
        ratios.append(audit_rate / plain_rate)
    return {"ratio": statistics.median(ratios), "ratios": ratios}


WORKERS = {"train": worker_train, "plain": worker_plain, "revival": worker_revival, "audit": worker_audit}


# ------------------------------------------------------------------------------------------------ driver


def run_worker(kind: str, tmp: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tmp", tmp]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"worker {kind} {kw} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compiled-repeats", type=int, default=1, help="repeats of the torch.compile arms (0: skip)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", default="bench.json")
    ap.add_argument("--worker", choices=list(WORKERS))
    ap.add_argument("--tmp")
    ap.add_argument("--monitor", default="on")
    ap.add_argument("--compile", default="off")
    ap.add_argument("--final")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        eager: dict[str, list[dict]] = {"on": [], "off": [], "plain": [], "sampled": []}
        for _ in range(args.repeats):
            eager["on"].append(run_worker("train", tmp, monitor="on", steps=args.steps))
            eager["off"].append(run_worker("train", tmp, monitor="off", steps=args.steps))
            eager["plain"].append(run_worker("plain", tmp, steps=args.steps))
            eager["sampled"].append(run_worker("train", tmp, monitor=f"sample{SAMPLE_EVERY}", steps=args.steps))
        compiled: dict[str, list[dict]] = {"on": [], "off": []}
        for _ in range(args.compiled_repeats):
            compiled["on"].append(run_worker("train", tmp, monitor="on", compile="on", steps=args.steps))
            compiled["off"].append(run_worker("train", tmp, monitor="off", compile="on", steps=args.steps))
        revival = [run_worker("revival", tmp, steps=args.steps)]  # one: it is far from its target
        audit = run_worker("audit", tmp, final=eager["on"][0]["final"], repeats=args.repeats)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    def ratio_of_medians(a, b, key="tokens_per_s"):
        return med(a, key) / med(b, key)

    results = {
        "device": device,
        "repeats": args.repeats,
        "steps": args.steps,
        "eager_tokens_per_s": {k: med(v, "tokens_per_s") for k, v in eager.items()},
        "monitor_overhead_eager": 1 - ratio_of_medians(eager["on"], eager["off"]),
        "monitor_overhead_eager_sampled": 1 - ratio_of_medians(eager["sampled"], eager["off"]),
        "reviveformer_vs_plain": ratio_of_medians(eager["on"], eager["plain"]),
        "reviveformer_no_monitor_vs_plain": ratio_of_medians(eager["off"], eager["plain"]),
        "revival_fraction_of_epoch": med(revival, "fraction"),
        "audit_vs_plain_forward": audit["ratio"],
        "peak_memory_mb": {"on": med(eager["on"], "peak_mb"), "off": med(eager["off"], "peak_mb")},
        "memory_increase": ratio_of_medians(eager["on"], eager["off"], "peak_mb") - 1,
    }
    if args.compiled_repeats:
        results["compiled_tokens_per_s"] = {k: med(v, "tokens_per_s") for k, v in compiled.items()}
        results["monitor_overhead_compiled"] = 1 - ratio_of_medians(compiled["on"], compiled["off"])
    results["wall_s"] = time.perf_counter() - t_start

    compiled_overhead = results.get("monitor_overhead_compiled")
    # (figure, value, shown as "pct" or "ratio", target text, met)
    targets = [
        ("monitor overhead, eager", results["monitor_overhead_eager"], "pct", "< 3%",
         results["monitor_overhead_eager"] < 0.03),
        (f"  same, liveness.sample_every={SAMPLE_EVERY}", results["monitor_overhead_eager_sampled"], "pct", "< 3%",
         results["monitor_overhead_eager_sampled"] < 0.03),
        ("monitor overhead, compiled", compiled_overhead, "pct", "< 1%",
         compiled_overhead is not None and compiled_overhead < 0.01),
        ("reviveformer step / plain loop", results["reviveformer_vs_plain"], "ratio", ">= 0.97",
         results["reviveformer_vs_plain"] >= 0.97),
        ("epoch-end revival / epoch", results["revival_fraction_of_epoch"], "pct", "< 2%",
         results["revival_fraction_of_epoch"] < 0.02),
        ("audit / plain no_grad forward", results["audit_vs_plain_forward"], "ratio", ">= 0.9",
         results["audit_vs_plain_forward"] >= 0.9),
        ("peak memory, monitor on vs off", results["memory_increase"], "pct", "< 5% more",
         results["memory_increase"] < 0.05),
    ]
    print(f"device: {device}; {args.repeats} repeats of {args.steps} steps at the quickstart size; median of repeats")
    print(f"{'figure':<34}{'measured':>12}  {'target':<10} met")
    for name, value, kind, target, ok in targets:
        shown = "-" if value is None else (f"{value:.3f}" if kind == "ratio" else f"{value:+.2%}")
        print(f"{name:<34}{shown:>12}  {target:<10} {'yes' if ok else 'NO'}")
    print(f"tokens/s eager: monitor on {results['eager_tokens_per_s']['on']:,.0f}, off "
          f"{results['eager_tokens_per_s']['off']:,.0f}, plain loop {results['eager_tokens_per_s']['plain']:,.0f}")
    if "compiled_tokens_per_s" in results:
        c = results["compiled_tokens_per_s"]
        print(f"tokens/s compiled: monitor on {c['on']:,.0f}, off {c['off']:,.0f}")
    results["targets"] = [{"figure": n, "value": v, "target": t, "met": ok} for n, v, _, t, ok in targets]
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wall {results['wall_s']:.0f}s; JSON: {args.json}")


if __name__ == "__main__":
    main()
