"""`reviveformer audit CHECKPOINT [key=value ...] [--out DIR]`: liveness of a saved model on data."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure the liveness of a saved model on data: liveness.json, plots and a table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a model directory (RUN_DIR/final, any GPT-2 save_pretrained folder) or a run dir"
    )
    p.add_argument(
        "overrides", nargs="*", help="data.* / liveness.* overrides, e.g. data.source=text data.path=F"
    )
    p.add_argument("--out", help="output folder (default: audit/ beside the checkpoint)")
    p.add_argument(
        "--split",
        choices=["validation", "train", "all"],
        default="validation",
        help="which split of the data to measure on (default: validation)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch per process")


def table(liveness: dict) -> str:
    """Per site and layer: dead ratio and dormant ratio, as aligned text."""
    lines = [f"{'site':<10}{'layer':>6}{'units':>8}{'dead':>9}{'dormant':>10}"]
    for site, layers in liveness["sites"].items():
        for e in layers:
            lines.append(
                f"{site:<10}{e['layer']:>6}{e['units']:>8}{e['dead_ratio']:>9.3f}{e['dormant_ratio']:>10.3f}"
            )
    cap = liveness.get("capacity")
    if cap:
        lines.append(
            f"alive MLP units {cap['alive_units']} ({cap['alive_fraction']:.1%}), effective parameters "
            f"{cap['effective_params']:,} ({cap['effective_param_fraction']:.1%})"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from reviveformer import plots
    from reviveformer.saved_model import measure_saved, open_saved_model, write_json
    from reviveformer.trainer import release

    saved = open_saved_model(args.checkpoint, args.overrides)
    out = Path(args.out) if args.out else saved.path.parent / "audit"
    acc = Accelerator()
    val, report, hists = measure_saved(saved, acc, args.split, args.batch_size, histogram=True)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        data = report.to_json()
        write_json(out / "liveness.json", data)
        plots.plot_frequency_heatmap(data, out / "frequency_heatmap.png")
        plots.plot_dead_ratio_per_layer(data, out / "dead_ratio_per_layer.png")
        if hists:
            plots.plot_activation_histograms(hists, out / "activation_histograms.png")
        print(table(data))
        print(f"tokens: {data['tokens']:,}  loss: {val['val/loss']:.4f}  perplexity: {val['val/ppl']:.2f}")
        print(f"liveness.json and plots: {out}")
    release(acc)
    acc.end_training()
    return 0
