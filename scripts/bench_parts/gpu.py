"""--gpu: GPT-2 124M in bf16 on one GPU, plain vs monitor, eager and compiled, after a check of the monitor's
counts against counts by hand; --gpu --alone: each arm alone in a process of its own."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from .common import Clock, run_worker
from .loops import LoopArm, _gpt2, interleaved, overheads

# dense bf16 peak FLOP/s for MFU, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


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
