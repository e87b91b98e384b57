"""`reviveformer strip CHECKPOINT --out DIR [key=value ...]`: one synaptic-stripping pass on a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

from reviveformer.plugins import add_trust_argument

HELP = "measure a saved model, strip the incoming weights of its dead MLP units, save the result"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a model directory (RUN_DIR/final, any GPT-2 save_pretrained folder) or a run dir"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="data.* / liveness.* / revival.synaptic_stripping.fraction|strip_bias overrides",
    )
    p.add_argument("--out", required=True, help="folder for the stripped model (must not exist or be empty)")
    p.add_argument(
        "--split",
        choices=["validation", "train", "all"],
        default="validation",
        help="which split of the data to measure on (default: validation)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch per process")
    add_trust_argument(p)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from reviveformer.builder import release_accelerator
    from reviveformer.errors import UserError
    from reviveformer.paths import check_out_dir
    from reviveformer.revival.stripping import SynapticStripping, check_strippable
    from reviveformer.saved_model import measure_saved, open_saved_model

    out = check_out_dir(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already exists and is not an empty folder; give a new folder")
    saved = open_saved_model(args.checkpoint, args.overrides, trust_remote_code=args.trust_remote_code)
    check_strippable(saved.model)  # before measuring: a gated MLP is refused with the reason, nothing written
    if "mlp_post" not in saved.cfg.liveness.sites:
        raise UserError("strip decides from the dead units at mlp_post: keep 'mlp_post' in liveness.sites")
    acc = Accelerator()
    _, report, _ = measure_saved(saved, acc, args.split, args.batch_size, progress_desc="measure")
    unwrapped = saved.model  # the prepared wrapper shares these parameters
    stripper = SynapticStripping.from_config(saved.cfg.revival.synaptic_stripping)
    metrics = stripper.revive(unwrapped, report, None)
    if acc.is_main_process:
        result = _save_stripped(out, saved, unwrapped, stripper, metrics, report)
        for d in result["layers"]:
            print(
                f"layer {d['layer']}: {d['dead_units']} dead units, {d['weights_stripped']} weights stripped"
            )
        print(
            f"stripped {result['weights_stripped']} weights of {result['dead_units']} dead units; "
            f"model, strip.json and liveness.json in {out}"
        )
    release_accelerator(acc)
    acc.end_training()
    return 0


def _save_stripped(out: Path, saved, model, stripper, metrics: dict, report) -> dict:
    """Write the stripped model, strip.json and liveness.json into a fresh folder beside `out`, then rename it
    to `out`: a half-written result never sits under the name asked for. The temporary folder gets a unique
    name (mkdtemp), so no folder of the user's is ever overwritten or removed; only ours is, on failure."""
    import shutil
    import tempfile

    from reviveformer import metric_keys
    from reviveformer.model import save_final
    from reviveformer.saved_model import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = saved.cfg
        cfg.revival.method = "synaptic_stripping"
        save_final(model, saved.tokenizer, cfg, tmp)
        layers = [
            {"layer": d["layer"], "dead_units": d["dead_units"], "weights_stripped": d["stripped_now"]}
            for d in stripper.last_layer_details()
        ]
        result = {
            "checkpoint": str(saved.path),
            "fraction": cfg.revival.synaptic_stripping.fraction,
            "strip_bias": cfg.revival.synaptic_stripping.strip_bias,
            "dead_units": int(metrics.get(metric_keys.revival_key("dead_units"), 0)),
            "weights_stripped": int(metrics.get(metric_keys.revival_key("stripped_now"), 0)),
            "layers": layers,
        }
        write_json(tmp / "strip.json", result)
        write_json(tmp / "liveness.json", report.to_json())
        if out.exists():
            out.rmdir()  # checked empty before measuring
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
