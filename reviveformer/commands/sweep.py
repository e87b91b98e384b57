"""`reviveformer sweep RECIPE.yaml --activations relu,gelu,... [key=value ...]`: activation pilots + chart.

One run per activation (same seed, data and steps), grouped under one W&B group, then the chart that tells
which activation kills fewest neurons (dead ratio per layer, one line per activation) and a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "train one pilot per activation and chart the dead ratio per layer of each"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe of the pilot")
    p.add_argument("overrides", nargs="*", help="overrides for every pilot, e.g. train.max_steps=200")
    p.add_argument("--activations", required=True, help="comma-separated activation names, e.g. relu,gelu,silu")
    p.add_argument("--out", help="sweep folder (default: sweep/ beside the recipe's train.output_dir)")
    p.add_argument("--threshold", type=float, default=None,
                   help="draw the chart at another firing threshold, re-measured on each pilot's final model "
                        "(no re-training)")


def _parse_activations(text: str) -> list[str]:
    from reviveformer.activations import validate_activation
    from reviveformer.errors import UserError

    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise UserError("--activations needs at least one name, e.g. --activations relu,gelu")
    if len(set(names)) != len(names):
        raise UserError(f"--activations lists a name twice: {text}")
    for name in names:
        validate_activation(name, key="--activations")
    return names


def _last_liveness(run_dir: Path) -> dict | None:
    files = sorted((run_dir / "liveness").glob("epoch_*.json"))
    return json.loads(files[-1].read_text()) if files else None


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from reviveformer import plots
    from reviveformer.compare import compare_runs
    from reviveformer.config import load_config
    from reviveformer.errors import UserError
    from reviveformer.trainer import train

    names = _parse_activations(args.activations)
    if args.threshold is not None and args.threshold < 0:
        raise UserError(f"--threshold={args.threshold} must be >= 0")
    base = load_config(args.recipe, args.overrides)  # validates the recipe and overrides once, up front
    out = Path(args.out) if args.out else Path(base.train.output_dir).parent / "sweep"
    group = base.wandb.group or f"sweep-{Path(args.recipe).stem}"
    user_keys = {o.split("=", 1)[0] for o in args.overrides}
    runs: dict[str, Path] = {}
    for name in names:
        extra = [f"model.activation={name}", f"train.output_dir={out / _dirname(name)}", f"wandb.group={group}",
                 "wandb.job_type=sweep", f"wandb.name={out.name}-{_dirname(name)}"]
        if "train.resume" not in user_keys:
            extra.append("train.resume=auto")  # re-running a sweep finishes what is missing
        cfg = load_config(args.recipe, [*args.overrides, *extra])
        cfg.wandb.tags = [*cfg.wandb.tags, f"activation:{name}"]
        summary = train(cfg, keep_process_group=True)
        runs[name] = Path(summary.run_dir)
    state = PartialState()
    liveness = {name: _last_liveness(d) for name, d in runs.items()}
    if args.threshold is not None:
        liveness = _remeasure(runs, args.threshold)
    if state.is_main_process:
        missing = [n for n, v in liveness.items() if v is None]
        if missing:
            raise UserError(f"no liveness measurement for {', '.join(missing)}: keep liveness.enabled=true")
        out.mkdir(parents=True, exist_ok=True)
        charts = []
        sites = [s for s in ("mlp_pre", "mlp_post", "attn_out") if any(s in v["sites"] for v in liveness.values())]
        suffix = f" (threshold {args.threshold:g})" if args.threshold is not None else ""
        for site in sites:
            charts.append(plots.plot_runs_dead_ratio_per_layer(
                liveness, site, out / f"dead_ratio_per_layer_{site}.png",
                title=f"Dead units per layer by activation: {site}{suffix}"))
        result = compare_runs([str(d) for d in runs.values()], out / "compare")
        (out / "sweep.json").write_text(json.dumps(
            {"activations": names, "threshold": args.threshold, "runs": {n: str(d) for n, d in runs.items()},
             "dead_ratio_per_layer": {n: {s: [e["dead_ratio"] for e in v["sites"][s]] for s in v["sites"]}
                                      for n, v in liveness.items()}}, indent=1))
        print(_table(liveness, sites))
        print(f"charts: {', '.join(str(c) for c in charts)}")
        print(f"table: {result['markdown']}")
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


def _dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def _table(liveness: dict[str, dict], sites: list[str]) -> str:
    head = f"{'activation':<14}" + "".join(f"{s + ' dead':>16}" for s in sites)
    rows = [head]
    for name, v in liveness.items():
        cells = []
        for s in sites:
            layers = v["sites"].get(s, [])
            units = sum(e["units"] for e in layers)
            dead = sum(len(e["dead_units"]) for e in layers)
            cells.append(f"{dead / units:>16.3f}" if units else f"{'-':>16}")
        rows.append(f"{name:<14}" + "".join(cells))
    return "\n".join(rows)


def _remeasure(runs: dict[str, Path], threshold: float) -> dict[str, dict]:
    """Each pilot's final model measured again at another firing threshold (counts depend on the threshold,
    so saved counts cannot be re-thresholded; the saved model can be re-measured without re-training)."""
    from accelerate import Accelerator

    from reviveformer.saved_model import measure_saved, open_saved_model

    acc = Accelerator()
    out = {}
    for name, d in runs.items():
        saved = open_saved_model(str(d / "final"), [f"liveness.threshold={threshold}"])
        _, report, _ = measure_saved(saved, acc, progress_desc=f"re-measure {name}")
        out[name] = report.to_json()
    return out
