"""--scaling: the monitor's overhead over model widths and depths, in-process loops on CPU."""

from __future__ import annotations

from .common import Clock, MonitorTime, _fmt, _spread
from .loops import LoopArm, interleaved, overheads

SCALING = ((4, 128), (4, 256), (4, 512), (8, 128))  # (n_layer, n_embd)


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
