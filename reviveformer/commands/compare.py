"""`reviveformer compare RUN_DIR [RUN_DIR ...] [--out DIR]`: runs side by side, a table and figures.

Runs come from run directories, from a W&B group (`--wandb ENTITY/PROJECT --group G`), or both. Runs that
differ only in `train.seed` are one arm: mean +- sd over its seeds, bands in the figures, and each arm's
difference to the baseline arm in final val loss with a Welch t interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare runs side by side: a table (loss, dead ratios, capacity, revival) and figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", nargs="*", metavar="RUN_DIR", help="run directories written by `reviveformer train`"
    )
    p.add_argument(
        "--out",
        help="output folder (default: compare/ beside the first RUN_DIR, or "
        "compare-GROUP/ in the current folder with --wandb)",
    )
    p.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT",
        help="also read the runs of a W&B group (needs W&B credentials: `wandb login` or WANDB_API_KEY)",
    )
    p.add_argument("--group", help="the W&B group to read with --wandb (the recipes' wandb.group)")
    p.add_argument(
        "--baseline",
        metavar="ARM",
        help="the arm the others are compared to over seeds (default: the arm named baseline, "
        "else the first)",
    )
    p.add_argument(
        "--include-incomplete",
        action="store_true",
        help="count runs that did not finish (status.json not 'finished', or no final/ in an older run "
        "folder) in the arms over seeds; by default they are shown, marked, and left out",
    )


def _default_out(args: argparse.Namespace) -> Path:
    if args.run_dirs:
        return Path(args.run_dirs[0]).parent / "compare"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in args.group)
    return Path(f"compare-{safe}")


def run(args: argparse.Namespace) -> int:
    from reviveformer import compare
    from reviveformer.errors import UserError
    from reviveformer.pages import write_comparison_report
    from reviveformer.paths import check_out_dir

    if args.wandb and not args.group:
        raise UserError(
            "--wandb needs --group G: the W&B group whose runs to compare (the recipes' wandb.group)"
        )
    if args.group and not args.wandb:
        raise UserError("--group needs --wandb ENTITY/PROJECT: the W&B project the group is in")
    if not args.run_dirs and not args.wandb:
        raise UserError("nothing to compare: give one or more RUN_DIRs, or --wandb ENTITY/PROJECT --group G")

    out = check_out_dir(args.out if args.out else _default_out(args))
    # Read everything before writing anything, so a bad directory leaves no half-written output.
    runs = compare.load_runs(args.run_dirs) if args.run_dirs else []
    if args.wandb:
        fetched = compare.fetch_wandb(args.wandb, args.group)
        taken = {r.name for r in runs}
        for r in fetched:
            if r.name in taken:  # a local directory and a W&B run of the same name
                r.name = f"wandb:{r.name}"
        runs += fetched
    result = compare.write_comparison(runs, out, args.baseline, args.include_incomplete)
    page = write_comparison_report(runs, result, out)
    print(result["text"])
    print()
    print(f"table: {result['markdown']} (rows as JSON: {result['json']})")
    print(f"report page: {page}")
    for title, path in result["figures"].items():
        print(f"figure, {title}: {path}")
    return 0
