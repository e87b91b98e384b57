"""`reviveformer recipes`: the built-in recipes (run one by name, `reviveformer train quickstart`) and the
Accelerate launch configs shipped with the package, each with its one-line purpose and where it lies (to copy
and edit, or to give to `accelerate launch --config_file`)."""

from __future__ import annotations

import argparse

HELP = "list the built-in recipes (reviveformer train NAME) and Accelerate launch configs, with their purpose"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from reviveformer.builtin_recipes import BUILTIN_DIR, LAUNCH_CONFIG_DIR, purpose

    recipes = sorted(BUILTIN_DIR.glob("*.yaml"), key=lambda p: p.stem)
    width = max(len(p.stem) for p in recipes)
    print(f"built-in recipes (reviveformer train NAME [key=value ...]), in {BUILTIN_DIR}:")
    for path in recipes:
        print(f"  {path.stem:<{width}}  {purpose(path)}")
    print(f"Accelerate launch configs (accelerate launch --config_file FILE ...), in {LAUNCH_CONFIG_DIR}:")
    for path in sorted(LAUNCH_CONFIG_DIR.glob("*.yaml")):
        print(f"  {path.name:<{width}}  {purpose(path)}")
    return 0
