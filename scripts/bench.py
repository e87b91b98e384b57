"""Benchmark of the liveness monitor's cost: every figure a ratio of arms measured side by side, interleaved.

    .venv/bin/python scripts/bench.py                  # the issue-12 targets at the quickstart size (<= 6 min, 2 cores)
    .venv/bin/python scripts/bench.py --scaling        # eager and compiled overhead at widths 128/256/512, 4 vs 8 layers
    .venv/bin/python scripts/bench.py --gpu            # GPT-2 124M, bf16, on one GPU (<= 8 min on an H100)
    .venv/bin/python scripts/bench.py --gpu --tiny     # the same code at a tiny size, runnable on CPU
    .venv/bin/python scripts/bench.py --gpu --alone    # every GPU arm alone in a fresh process (issue 21)
    .venv/bin/python scripts/bench.py --structure      # graph breaks, recompiles, kernels with/without monitor
    .venv/bin/python scripts/bench.py --real-run       # `reviveformer train` quickstart, monitor on vs off (~4 min)

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
import json
import sys
import time
from pathlib import Path

# scripts/ is not a package: the bench's parts are found beside this file, whether it runs as a script (its
# folder is then on the path already) or is loaded by file name, as tests/test_bench.py does
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parts.common import RECIPE, _fmt  # noqa: E402
from bench_parts.gpu import (  # noqa: E402
    ALONE_ARMS,
    print_alone,
    run_gpu,
    run_gpu_alone,
    worker_gpu_alone,
    worker_gpu_counts,
)
from bench_parts.real_run import run_real  # noqa: E402
from bench_parts.scaling import run_scaling  # noqa: E402
from bench_parts.structure import measure, print_structure  # noqa: E402
from bench_parts.trainer_arms import (  # noqa: E402
    COMPILED_ARMS,
    TRAIN_ARMS,
    _overrides,
    main_targets,
    worker_arms,
    worker_audit,
    worker_peak,
)

# read by tests/test_bench.py through this module
__all__ = ["ALONE_ARMS", "COMPILED_ARMS", "RECIPE", "TRAIN_ARMS", "_overrides"]


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
        help=f"--gpu: every arm ({', '.join(ALONE_ARMS)}; --arms to choose) alone in a fresh process per arm "
        "and kind (eager, compiled) instead",
    )
    ap.add_argument("--alone-repeats", type=int, default=1, help="--gpu --alone: processes per arm and kind")
    ap.add_argument(
        "--structure",
        action="store_true",
        help="graph breaks, recompiles, Inductor kernels with and without the monitor, host copies (on CUDA "
        "if there is one), instead",
    )
    ap.add_argument(
        "--real-run",
        action="store_true",
        help="the quickstart recipe by `reviveformer train`, monitor on against off, fresh processes, instead",
    )
    ap.add_argument("--real-steps", type=int, default=60, help="--real-run: optimizer steps per run")
    ap.add_argument("--real-rounds", type=int, default=3, help="--real-run: interleaved rounds of both arms")
    ap.add_argument("--worker", choices=["arms", "peak", "audit", "gpu-alone", "gpu-counts"])
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)  # a gpu-alone worker's kind
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
            "gpu-counts": worker_gpu_counts,
        }[args.worker]
        print(json.dumps(worker(args)))
        return
    t0 = time.perf_counter()
    if args.gpu and not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs a CUDA device (or --tiny, a small size that runs on CPU)", file=sys.stderr)
            sys.exit(2)
    if args.arms and not set(args.arms.split(",")) <= set(ALONE_ARMS):
        print(f"--arms={args.arms}: each must be one of {', '.join(ALONE_ARMS)}", file=sys.stderr)
        sys.exit(2)
    if args.real_run:
        res = run_real(args.real_steps, args.real_rounds)
        print(
            f"real run, quickstart, {args.real_steps} steps: monitor overhead (off tokens/s / on - 1) "
            f"{_fmt(res['real/monitor_overhead'])} over {args.real_rounds} rounds"
        )
    elif args.structure:
        res = measure()
        print_structure(res)
    elif args.gpu and args.alone:
        res = run_gpu_alone(args)
        print_alone(res)
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
