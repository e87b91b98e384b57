"""--gpu: GPT-2 124M in bf16 on one GPU, plain vs monitor, eager and compiled, after a check of the monitor's
counts against counts by hand; --gpu --alone: each arm (the plain loop, the monitor, the reviveformer Trainer, the bench's
own reference GPT) alone in a process of its own, eager and compiled."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from .common import Clock, _spread, flops_per_token, run_worker
from .loops import LoopArm, _gpt2, interleaved, overheads

# dense bf16 peak FLOP/s for MFU, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def check_counts(shape: tuple[int, int, int, int], ids, bf16: bool) -> dict:
    """The monitor's counts (liveness.counting=auto: the compiled kernel on CUDA) after one forward, against
    counts taken by hand from the same activations (forward hooks, float64 compare): fire counts must be
    equal, |a| sums equal to float32 rounding."""
    import torch

    from reviveformer.architectures import gpt2
    from reviveformer.config import LivenessConfig
    from reviveformer.liveness import LivenessMonitor

    torch.manual_seed(0)
    model = _gpt2(*shape, ids.device)
    cfg = LivenessConfig(counting="auto")
    monitor = LivenessMonitor(model, cfg)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(gpt2.blocks(model)):
        for site in monitor.sites:
            path, reads = gpt2.site_location(site)

            def hook(mod, args, out, site=site, i=i, reads=reads):
                a = args[0] if reads == "input" else out
                seen[(site, i)] = a.detach().reshape(-1, a.shape[-1])

            hooks.append(gpt2.block_module(block, path, i).register_forward_hook(hook))
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
        per_token = flops_per_token(n_params, n_layer, n_embd, block)
        peak = next((v for k, v in PEAK_BF16.items() if cuda and k in results["device"]), None)
        kind = "compiled" if compiled else "eager"
        for arm in arms:
            rate = tokens / statistics.median(arm.times)
            results[f"{kind}/{arm.name}/tokens_per_s"] = rate
            results[f"{kind}/{arm.name}/mfu"] = rate * per_token / peak if peak else None
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


ALONE_ARMS = ("plain", "monitor", "trainer", "reference")
"""--gpu --alone arms: the HF GPT-2 in a plain loop; the same with the monitor (its report at each log); the
reviveformer Trainer's own step, monitor off (its data, Accelerate, clipping, scheduler); the bench's own
plain PyTorch GPT (reference_gpt.py) in the plain loop."""


def _device():
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    return torch.device("cuda" if cuda else "cpu"), cuda


def _trainer_ms_per_step(args, shape, batch: int, compiled: bool, clock: Clock) -> tuple[list[float], int]:
    """The reviveformer Trainer at the bench's shape (its own stdlib data, through `_tokenizer_of_size`, so that
    its model has the same parameters as the other arms'), monitor off, for 1 + `gpu_rounds` chunks of
    `gpu_steps` steps: ms/step per log window (`gpu_log_every` steps, at most `gpu_steps`), the first window
    (warm-up, compile) left out; and its parameter count. Its log (`loss.item()`, the metrics) and
    clipping are in its windows, as they are in every real run."""
    from .trainer_arms import run_trainer_arm

    n_layer, n_embd, block, vocab = shape
    steps = (1 + args.gpu_rounds) * args.gpu_steps
    # its log as often as the loop arms' (a window needs a log at each end: at most gpu_steps apart)
    log_every = min(args.gpu_log_every, args.gpu_steps)
    tokens = steps * batch * block
    extra = [
        f"model.n_layer={n_layer}",
        f"model.n_embd={n_embd}",
        f"model.n_head={max(1, n_embd // 64)}",
        f"model.n_positions={block}",
        "model.activation=gelu_new",
        f"data.tokenizer={_tokenizer_of_size(vocab, Path(args.tmp) / 'tokenizer')}",
        f"data.block_size={block}",
        f"data.max_tokens={int(tokens * 1.25) + 50 * block}",  # one epoch holds every step
        f"train.batch_size={batch}",
        "train.lr=1e-4",
        f"train.log_every={log_every}",
        "train.eval_batches=1",
    ]
    arm = "compiled-off" if compiled else "off"
    res = run_trainer_arm(arm, Path(args.tmp) / f"trainer-{arm}", steps, extra, clock)
    ms = [batch * block / r * 1000 for r in res["window_rates"]]
    return ms, res["params"]


def _tokenizer_of_size(vocab: int, out: Path) -> Path:
    """A byte-level BPE tokenizer of exactly `vocab` entries, saved in `out`: a few merges learnt from this file,
    the rest unused added tokens. A BPE trained on the stdlib corpus stops short of GPT-2's 50,257 (about
    38,000), and the Trainer sizes its model's vocabulary by its tokenizer."""
    from reviveformer.data import train_bpe_tokenizer

    tok = train_bpe_tokenizer([Path(__file__).read_text()], min(vocab, 512))
    tok.add_tokens([f"<unused{i}>" for i in range(vocab - len(tok))])
    assert len(tok) == vocab, (len(tok), vocab)
    tok.save_pretrained(out)
    return out


def worker_gpu_alone(args) -> dict:
    """One arm (`args.arms`, one of ALONE_ARMS) eager or compiled (`args.compiled`) alone in this process:
    ms/step over `args.gpu_rounds` chunks of `args.gpu_steps` steps after warm-up (5 steps; the trainer: its
    first log window), a log (with the monitor, its report) every `args.gpu_log_every` steps."""
    import torch

    dev, cuda = _device()
    shape, batch = _gpu_shape(args)
    clock = Clock(cuda)
    compiled = bool(args.compiled)
    if args.arms == "trainer":
        ms, params = _trainer_ms_per_step(args, shape, batch, compiled, clock)
        return {"ms_per_step": ms, "params": params}
    ids = torch.randint(
        0, shape[3], (batch, shape[2]), device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    monitor = "auto" if args.arms == "monitor" else None
    arm = LoopArm(args.arms, shape, dev, monitor, compiled, cuda, args.gpu_log_every)
    interleaved([arm], ids, warmup=5, rounds=args.gpu_rounds, steps=args.gpu_steps, clock=clock)
    return {
        "ms_per_step": [t / args.gpu_steps * 1000 for t in arm.times],
        "params": sum(p.numel() for p in arm.model.parameters()),
        "peak_mb": max(arm.peaks_mb) if arm.peaks_mb else None,
    }


def worker_gpu_counts(args) -> dict:
    """check_counts at the --gpu shape, in a process of its own (it leaves nothing on the device)."""
    import torch

    dev, cuda = _device()
    shape, batch = _gpu_shape(args)
    ids = torch.randint(
        0, shape[3], (batch, shape[2]), device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    return check_counts(shape, ids, cuda)


def run_gpu_alone(args) -> dict:
    """Every --gpu arm (ALONE_ARMS, or those `args.arms` names) alone in a fresh process per arm and kind (compiled
    first, then eager), as in a real run: one model and one compiled graph per process; `args.alone_repeats`
    times, the arms in turn. First the monitor's counts on this device against counts by hand. Per arm and kind:
    the median ms/step with its min and max over all chunks, and MFU (`flops_per_token`; the peak by card name).
    The figures and the JSON are renewed after every process, so a run cut short keeps what it measured."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    shape, batch = _gpu_shape(args)
    arms = args.arms.split(",") if args.arms else list(ALONE_ARMS)
    tiny = {"tiny": ""} if args.tiny else {}
    res: dict = {
        "device": device,
        "torch": torch.__version__,
        "shape": shape,
        "batch": batch,
        "flops_per_token": "6 N + 12 L T d (PaLM appendix B; N all parameters, the tied embedding once)",
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        res["counts_check"] = run_worker("gpu-counts", tmp, batch=args.batch, **tiny)
        print(f"counts on {device} vs by hand: {res['counts_check']}", flush=True)
        for rep in range(args.alone_repeats):
            for kind in ("compiled", "eager"):
                for arm in arms:
                    kw = {
                        "arms": arm,
                        "gpu_rounds": args.gpu_rounds,
                        "gpu_steps": args.gpu_steps,
                        "gpu_log_every": args.gpu_log_every,
                        **({"compiled": ""} if kind == "compiled" else {}),
                    }
                    t0 = time.perf_counter()
                    r = run_worker("gpu-alone", tmp, **kw, batch=args.batch, **tiny)
                    res["runs"].setdefault(f"{kind}/{arm}", []).append(r)
                    print(
                        f"  {kind} {arm}, process {rep + 1} ({time.perf_counter() - t0:.0f} s): ms/step "
                        + " ".join(f"{x:.2f}" for x in r["ms_per_step"]),
                        flush=True,
                    )
                    _summarize(res)
                    Path(args.json).write_text(json.dumps(res, indent=1))
    return res


def _summarize(res: dict) -> None:
    """Per arm and kind in `res["runs"]`: ms/step spread, tokens/s, MFU; the ratios of the issue's targets."""
    peak = next((v for k, v in PEAK_BF16.items() if k in res["device"]), None)
    n_layer, n_embd, block, _ = res["shape"]
    for key, rs in res["runs"].items():
        ms = _spread([x for r in rs for x in r["ms_per_step"]])
        params = rs[0]["params"]
        rate = res["batch"] * block / (ms["median"] / 1000)
        res[f"{key}/ms_per_step"] = ms
        res[f"{key}/params"] = params
        res[f"{key}/tokens_per_s"] = rate
        res[f"{key}/mfu"] = rate * flops_per_token(params, n_layer, n_embd, block) / peak if peak else None
    for kind in ("eager", "compiled"):
        med = {
            a: res[f"{kind}/{a}/ms_per_step"]["median"] for a in ALONE_ARMS if f"{kind}/{a}" in res["runs"]
        }
        if "plain" in med and "monitor" in med:
            res[f"{kind}/monitor_overhead"] = med["monitor"] / med["plain"] - 1
        if "plain" in med and "trainer" in med:
            res[f"{kind}/trainer_off_vs_plain"] = (
                med["plain"] / med["trainer"]
            )  # a rate ratio (target >= 0.98)
        if "plain" in med and "reference" in med:
            res[f"{kind}/hf_vs_reference"] = med["reference"] / med["plain"]  # HF's rate / the reference's


def print_alone(res: dict) -> None:
    print(
        f"{res['device']}, GPT-2 {res['shape'][0]}x{res['shape'][1]} block {res['shape'][2]} vocab {res['shape'][3]}, "
        f"batch {res['batch']}; each arm alone in its process; ms/step median [min, max] over chunks; MFU from "
        f"{res['flops_per_token']}"
    )
    for key in res["runs"]:
        ms, mfu = res[f"{key}/ms_per_step"], res[f"{key}/mfu"]
        print(
            f"  {key:<18} {ms['median']:8.2f} [{ms['min']:.2f}, {ms['max']:.2f}] ms/step  "
            f"{res[f'{key}/tokens_per_s']:>12,.0f} tokens/s  MFU {'-' if mfu is None else f'{mfu:.1%}'}  "
            f"{res[f'{key}/params']:,} params"
        )
    figures = (
        ("monitor_overhead", "monitor on vs off", "{:+.2%}"),
        ("trainer_off_vs_plain", "reviveformer step (monitor off) / plain loop, rate", "{:.3f}"),
        ("hf_vs_reference", "HF GPT-2 / reference GPT, rate", "{:.3f}"),
    )
    for kind in ("compiled", "eager"):
        parts = [
            f"{name} {fmt.format(res[f'{kind}/{key}'])}"
            for key, name, fmt in figures
            if f"{kind}/{key}" in res
        ]
        if parts:
            print(f"  {kind}: " + "; ".join(parts))
