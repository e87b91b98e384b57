"""`reviveformer sweep RECIPE.yaml --grid KEY=V1,V2 [--grid ...] --seeds 0,1,2 [key=value ...]`: every cell of
a grid, for every seed, then a comparison that groups the seeds of each cell.

Each run (cell x seed) has its own run directory under the sweep folder, named after its cell and seed
(`activation-relu__seed-0`); all share one W&B group, and each cell is one arm (its W&B job_type).
`--activations relu,gelu` is shorthand for `--grid model.activation=relu,gelu`. Re-running the same command
continues a sweep: finished runs (status.json `finished`; in a folder from before status files, a `final/`
model) are kept as they are, an interrupted one resumes from its last checkpoint (`train.resume=auto`), the
rest start. The sweep folder's sweep.json records what defines the sweep (recipe, overrides, grid, seeds, the
resolved settings); a re-run into it that differs is refused before anything starts.

This module is the command line; the sweep itself is the `reviveformer.sweep` package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train every cell of a grid (e.g. activations, revival methods) for every seed, then compare them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe of every run, or a built-in recipe's name")
    p.add_argument("overrides", nargs="*", help="overrides for every run, e.g. train.max_steps=200")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values (repeat for more keys: every combination is a cell)",
    )
    p.add_argument("--activations", help="shorthand for --grid model.activation=NAMES, e.g. relu,gelu,silu")
    p.add_argument(
        "--seeds", help="comma-separated train.seed values run for every cell (default: the recipe's)"
    )
    p.add_argument("--out", help="sweep folder (default: sweep/ beside the recipe's train.output_dir)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="draw the per-layer chart at another firing threshold, re-measured on each run's final "
        "model (no re-training)",
    )


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from reviveformer import sweep
    from reviveformer.config import load_config
    from reviveformer.errors import UserError
    from reviveformer.liveness.options import LivenessConfig
    from reviveformer.paths import check_out_dir
    from reviveformer.ranges import field_range, flag_problem
    from reviveformer.run_checks import check_run_inputs

    if args.threshold is not None:  # the range liveness.threshold is checked against
        problem = flag_problem("--threshold", args.threshold, field_range(LivenessConfig, "threshold"))
        if problem:
            raise UserError(problem)
    axes = sweep.parse_grid(args.grid, args.activations)
    base = load_config(args.recipe, args.overrides)  # validates the recipe and overrides once, up front
    check_run_inputs(base)
    if not base.liveness.enabled:
        # Refused here, on every process, before any training: the summary needs each run's liveness.
        raise UserError(
            "sweep needs liveness.enabled=true: it compares the runs' dead ratios (remove the "
            "liveness.enabled=false override, or use `reviveformer train` for single runs)"
        )
    seeds = sweep.parse_seeds(args.seeds, base.train.seed)
    out = check_out_dir(args.out or Path(base.train.output_dir).parent / "sweep", "sweep folder")
    group = base.wandb.group or f"sweep-{Path(args.recipe).stem}"
    plan = sweep.plan_runs(axes, seeds, out, group)
    configs = sweep.run_configs(args.recipe, args.overrides, plan)
    # A sweep folder holds one sweep: a re-run that would train other runs is refused before anything starts.
    definition = sweep.sweep_definition(args.recipe, args.overrides, axes, seeds, base)
    sweep.check_definition(out, definition)
    finished = sweep.finished_runs(plan, configs, [k for k, _ in axes] + ["train.seed"])
    # The trainer's Accelerator reads ACCELERATE_USE_CPU; a PartialState made first must too, or a CPU launch
    # with N processes would set itself up as N single processes.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.is_main_process:
        sweep.write_definition(out, definition)
    sweep.train_runs(state, plan, configs, finished)
    liveness = sweep.final_liveness(plan, args.threshold)
    if state.is_main_process:
        sweep.summarise_sweep(plan, axes, seeds, out, liveness, args.threshold, base.wandb, group)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0
