"""The run's checks of its config before anything is built: the checks across sections
(`config.training_problems`, pure) and what they need from disk, read here (model.init_from's `config.json`
and tokenizer files). Called once, where the run is built (`Trainer`), and by `sweep` for every run before the
first trains; `audit` and `strip`, which only measure a saved model, do without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reviveformer.architectures import ARCHITECTURES
from reviveformer.config import Config, checkpoint_json, training_problems
from reviveformer.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a saved fast or slow Hugging Face tokenizer


def check_run_inputs(cfg: Config) -> None:
    """Raise one ConfigError listing every problem that makes `cfg` unfit for training although each section
    is valid on its own, before any data is prepared: the checks across sections, then what model.init_from's
    local checkpoint says of this config."""
    saved = checkpoint_json(cfg.model.init_from) if cfg.model.init_from else None
    problems = training_problems(cfg, saved)
    if saved:
        problems += checkpoint_problems(cfg, saved)
    if problems:
        raise ConfigError("invalid config for training: " + "; ".join(problems))


def checkpoint_problems(cfg: Config, saved: dict[str, Any]) -> list[str]:
    """What makes model.init_from's local checkpoint (its config.json `saved`) unfit for this config. A folder
    that is no checkpoint reviveformer reads at all is the model loader's to report."""
    problems: list[str] = []
    kind = saved.get("model_type")
    if kind not in ARCHITECTURES:
        return problems
    # refused here, before any data is prepared or written, rather than at the first revival mid-run
    refusal = ARCHITECTURES[kind].STRIP_REFUSAL
    if cfg.revival.method == "synaptic_stripping" and refusal:
        problems.append(
            f"revival.method=synaptic_stripping does not apply to model.init_from={cfg.model.init_from}, a "
            f"'{kind}' model: {refusal}"
        )
    if cfg.data.tokenizer == "bpe":
        folder = Path(cfg.model.init_from).expanduser()
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            problems.append(
                f"model.init_from={cfg.model.init_from} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}), "
                "and data.tokenizer=bpe would train a new vocabulary its embeddings do not know; give "
                "data.tokenizer=PATH of the tokenizer it was trained with (or gpt2 for a stock GPT-2)"
            )
    return problems
