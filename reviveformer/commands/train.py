"""`reviveformer train RECIPE.yaml [key=value ...]`: pre-train, or fine-tune with model.init_from."""

from __future__ import annotations

import argparse
import signal
import threading

from reviveformer.errors import StoppedInSetup

HELP = "train or fine-tune a GPT-2 from a recipe (overrides as key=value)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", help="YAML recipe (recipes/quickstart.yaml) or a built-in recipe's name (quickstart)"
    )
    p.add_argument("overrides", nargs="*", help="OmegaConf dot-list overrides, e.g. train.lr=3e-4")


def run(args: argparse.Namespace) -> int:
    # a stop signal while torch is imported and the recipe read ends the command at once (the trainer's own
    # handling takes over from its set-up on)
    previous = _stop_at_once()
    try:
        from reviveformer.config import load_config
        from reviveformer.errors import EXIT_STOPPED
        from reviveformer.trainer import train

        cfg = load_config(args.recipe, args.overrides)
        summary = train(cfg)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if summary.run_dir and _is_main():
        print("\n".join(summary.lines()))
    # a job script must tell a run that an alert stopped from one that finished
    return EXIT_STOPPED if summary.stopped_by else 0


def _stop_at_once() -> dict:
    """SIGTERM and SIGINT raise StoppedInSetup (main thread only); the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, frame) -> None:
        raise StoppedInSetup(signal.Signals(signum).name)

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("0", "")
