"""Open a saved model for `audit` and `strip`: its weights, tokenizer and config, and its data.

A checkpoint is any GPT2LMHeadModel directory (ours carries `reviveformer.yaml`, so its own data section and
validation split are used by default); a run directory means its `final/`. `data.*` and `liveness.*`
overrides point the measurement elsewhere.

The contract: docs/design.md, "Interfaces" (audit, strip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from reviveformer.config import Config, load_config, read_recipe, to_dict
from reviveformer.data import load_tokenizer, prepare_data
from reviveformer.errors import CheckpointError, UserError
from reviveformer.model import RECIPE_NAME, load_model
from reviveformer.plugins import TRUST_FLAG, TRUST_KEY, check_trusted
from reviveformer.run_files import atomic_write


@dataclass
class SavedModel:
    path: Path
    model: object
    tokenizer: object
    cfg: Config
    ours: bool


def resolve_checkpoint(path: str) -> Path:
    p = Path(path).expanduser()
    if (p / "final" / "config.json").is_file():  # a run directory
        return p / "final"
    if p.exists() and not (p / "config.json").is_file():
        raise CheckpointError(
            f"checkpoint {path} holds no config.json: give a model directory (RUN_DIR/final, a "
            "save_pretrained folder) or a run directory"
        )
    return p


def _trust_override(overrides: list[str]) -> bool:
    """The user's own `model.trust_remote_code=...` among the overrides, parsed as load_config parses it."""
    given = [o for o in overrides if o.partition("=")[0].strip() == TRUST_KEY]
    return bool(given) and load_config(None, given).model.trust_remote_code


def open_saved_model(path: str, overrides: list[str], *, trust_remote_code: bool = False) -> SavedModel:
    """The saved model at `path`, with its own config under the user's `overrides`. Code the folder's files
    name (a `package.module:attr` activation or revival method) is imported only when the user opts in, by
    `trust_remote_code` (--trust-remote-code) or the override model.trust_remote_code=true; never by the
    folder's own reviveformer.yaml."""
    trusted = trust_remote_code or _trust_override(overrides)
    opt_in = f"pass {TRUST_FLAG} (or {TRUST_KEY}=true)"
    where = resolve_checkpoint(path)
    ours = where.exists() and (where / RECIPE_NAME).is_file()
    if ours:
        # load_config imports the method it names: checked first, and before any weights are read
        method = OmegaConf.select(read_recipe(where / RECIPE_NAME), "revival.method")
        if method is not None:
            check_trusted(
                str(method),
                source=str(where / RECIPE_NAME),
                key="revival.method",
                trusted=trusted,
                opt_in=opt_in,
            )
    # not a local folder: a hub name (needs the hub or its cache)
    model = load_model(str(where) if where.exists() else str(path), trust_remote_code=trusted, opt_in=opt_in)
    base = None
    if ours:
        # with the user's overrides already: they can replace a saved value that a range added since refuses
        base = to_dict(load_config(where / RECIPE_NAME, overrides))
        base["train"]["output_dir"] = str(where.parent)
        base["model"]["init_from"] = None
        base["model"]["trust_remote_code"] = False  # only the user opts in, never a saved config
    cfg = load_config(base, overrides)
    tok_path = (
        str(where) if (where / "tokenizer.json").is_file() or (where / "vocab.json").is_file() else None
    )
    if cfg.data.tokenizer != "bpe":
        tok_path = cfg.data.tokenizer
    if tok_path is None:
        raise UserError(
            f"checkpoint {path} has no tokenizer: give one with data.tokenizer=PATH (a tokenizer folder)"
        )
    tokenizer = load_tokenizer(tok_path)
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: tokenizer {tok_path} has {len(tokenizer)} tokens but checkpoint "
            f"{path} embeds {model.config.vocab_size}; give the checkpoint's own tokenizer"
        )
    # max_position_embeddings: GPT-2's n_positions under transformers' common name, which every model has
    if cfg.data.block_size > model.config.max_position_embeddings:
        cfg.data.block_size = model.config.max_position_embeddings
    return SavedModel(path=where, model=model, tokenizer=tokenizer, cfg=cfg, ours=ours)


def measurement_data(saved: SavedModel, split: str):
    """The dataset to measure on: the validation split (default), the training split, or both."""
    data = prepare_data(saved.cfg.data, saved.cfg.train.seed, tokenizer=saved.tokenizer)
    if split == "validation":
        return data.val
    if split == "train":
        return data.train
    from datasets import concatenate_datasets

    return concatenate_datasets([data.train, data.val])


def write_json(path: Path, obj: dict) -> None:
    """Write `path` whole or not at all (`run_files.atomic_write`)."""
    atomic_write(path, json.dumps(obj, indent=1))


def measure_saved(
    saved: SavedModel,
    accelerator,
    split: str = "validation",
    batch_size: int = 16,
    histogram: bool = False,
    progress_desc: str = "audit",
    dataset=None,
):
    """One liveness measurement of a saved model: (val metrics, LivenessReport, histograms or {}).
    `dataset` (packed blocks) replaces the split of the model's own data when given."""
    from tqdm.auto import tqdm

    from reviveformer.evaluation import measure, val_loader
    from reviveformer.liveness import LivenessMonitor

    if batch_size < 1:
        raise UserError(f"--batch-size={batch_size} must be >= 1")
    if dataset is None:
        dataset = measurement_data(saved, split)
    monitor = LivenessMonitor(saved.model, saved.cfg.liveness)
    if histogram:
        monitor.request_histogram()  # a sample of activation values from the first batch
    model = accelerator.prepare(saved.model)
    loader = val_loader(accelerator, dataset, batch_size)
    bar = tqdm(total=len(loader), desc=progress_desc, unit="batch", disable=not accelerator.is_main_process)
    try:
        val, report = measure(model, loader, accelerator, monitor, progress=bar)
        hists = monitor.histograms() if histogram else {}
    finally:
        bar.close()
        monitor.close()
    return val, report, hists
