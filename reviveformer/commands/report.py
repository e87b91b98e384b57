"""`reviveformer report RUN_DIR [--out FILE]`: the report page of a run, from its files alone."""

from __future__ import annotations

import argparse

HELP = "write the report page of a run (RUN_DIR/report.html): works on a finished, running or killed run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `reviveformer train`")
    p.add_argument("--out", help="where to write the page (default: RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    from reviveformer.pages import write_run_report

    path = write_run_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
