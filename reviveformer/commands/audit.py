"""`reviveformer audit CHECKPOINT [key=value ...] [--out DIR]`: liveness of a saved model on data."""

from __future__ import annotations

import argparse

from reviveformer.plugins import add_trust_argument

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
    add_trust_argument(p)
    p.add_argument(
        "--gradients",
        action="store_true",
        help="also score every MLP unit by GraMa (mean |gradient| of its incoming weights over its layer's "
        "mean, over the same batches, eval mode): one backward pass per batch",
    )
    p.add_argument(
        "--grama-tau",
        type=float,
        default=None,
        help="with --gradients: a unit is GraMa-dormant when its score is <= this (default: revival.grama.tau)",
    )


def table(liveness: dict) -> str:
    """Per site and layer: dead ratio and dormant ratio, as aligned text."""
    lines = [f"{'site':<10}{'layer':>6}{'units':>8}{'dead':>9}{'dormant':>10}"]
    for site, layers in liveness["sites"].items():
        for e in layers:
            lines.append(
                f"{site:<10}{e['layer']:>6}{e['units']:>8}{e['dead_ratio']:>9.3f}{e['dormant_ratio']:>10.3f}"
            )
    grama = liveness.get("grama")
    if grama:
        lines.append(f"GraMa (gradient) dormant at tau={grama['tau']:g}, over {grama['batches']} batches:")
        for e in grama["layers"]:
            lines.append(f"{'mlp_post':<10}{e['layer']:>6}{e['units']:>8}{'':>9}{e['dormant_ratio']:>10.3f}")
    cap = liveness.get("capacity")
    if cap:
        lines.append(
            f"alive MLP units {cap['alive_units']} ({cap['alive_fraction']:.1%}), effective parameters "
            f"{cap['effective_params']:,} ({cap['effective_param_fraction']:.1%})"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from reviveformer import figures, metric_keys
    from reviveformer.builder import release_accelerator
    from reviveformer.errors import UserError
    from reviveformer.paths import check_out_dir
    from reviveformer.ranges import field_range, flag_problem
    from reviveformer.revival.reinit import TauOptions
    from reviveformer.saved_model import measure_saved, measurement_data, open_saved_model, write_json

    if args.grama_tau is not None:  # up front, in the range revival.grama.tau is checked against
        problem = flag_problem("--grama-tau", args.grama_tau, field_range(TauOptions, "tau"))
        if problem:
            raise UserError(problem)
    if args.out:
        check_out_dir(args.out)  # before the model is opened: a file in the way is known up front
    saved = open_saved_model(args.checkpoint, args.overrides, trust_remote_code=args.trust_remote_code)
    tau = args.grama_tau if args.grama_tau is not None else saved.cfg.revival.grama.tau
    # The default beside the checkpoint is checked too, before anything is measured or written.
    out = check_out_dir(args.out or saved.path.parent / "audit", "--out" if args.out else "output folder")
    acc = Accelerator()
    dataset = measurement_data(saved, args.split)
    val, report, hists = measure_saved(
        saved, acc, args.split, args.batch_size, histogram=True, dataset=dataset
    )
    grama = gradient_dormancy(saved, acc, dataset, args.batch_size, tau) if args.gradients else None
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        data = report.to_json()
        if grama is not None:
            data["grama"] = grama
        write_json(out / "liveness.json", data)
        figures.plot_frequency_heatmap(data, out / "frequency_heatmap.png")
        figures.plot_dead_ratio_per_layer(data, out / "dead_ratio_per_layer.png")
        if hists:
            figures.plot_activation_histograms(hists, out / "activation_histograms.png")
        print(table(data))
        print(
            f"tokens: {data['tokens']:,}  loss: {val[metric_keys.VAL_LOSS]:.4f}  perplexity: {val[metric_keys.VAL_PPL]:.2f}"
        )
        print(f"liveness.json and plots: {out}")
    release_accelerator(acc)
    acc.end_training()
    return 0


def gradient_dormancy(saved, accelerator, dataset, batch_size: int, tau: float) -> dict:
    """The `grama` section of an audit's liveness.json: per MLP layer, the mean GraMa score of every unit over
    all batches of `dataset` (all processes), and the units at or below `tau`."""
    import torch

    from reviveformer.evaluation import reduce_sum, val_loader
    from reviveformer.revival.grama import saved_model_scores

    loader = val_loader(accelerator, dataset, batch_size)
    sums, batches = saved_model_scores(saved.model, loader)
    total = int(reduce_sum(accelerator, torch.tensor(batches, device=accelerator.device)).item())
    layers = []
    for i in sorted(sums):
        scores = (reduce_sum(accelerator, sums[i]) / max(total, 1)).cpu().tolist()
        dormant = [j for j, v in enumerate(scores) if v <= tau]
        layers.append(
            {
                "layer": i,
                "units": len(scores),
                "dormant_units": dormant,
                "dormant_ratio": len(dormant) / len(scores),
                "scores": scores,
            }
        )
    return {"tau": tau, "batches": total, "layers": layers}
