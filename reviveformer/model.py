"""GPT-2 models: build one from the config, load a checkpoint (ours or any GPT2LMHeadModel), save `final/`."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer import activations
from reviveformer.config import Config, ModelConfig, save_config
from reviveformer.errors import CheckpointError

log = logging.getLogger("reviveformer")

DEFAULT_ACTIVATION = "gelu_new"
RECIPE_NAME = "reviveformer.yaml"  # the resolved reviveformer config saved beside a model
# transformers picks the loss from the class name, which for GPT2LMHeadModel says nothing, and then warns
CAUSAL_LM_LOSS = "ForCausalLM"


def build_model(cfg: ModelConfig, vocab_size: int, eos_token_id: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 with the configured sizes and MLP activation."""
    name = cfg.activation or DEFAULT_ACTIVATION
    activations.validate_activation(name)
    hf = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.n_inner,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        activation_function="gelu_new",  # replaced just below by the registry's module
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    model = GPT2LMHeadModel(hf)
    activations.set_activation(model, name, cfg.leaky_relu_slope)
    model.loss_type = CAUSAL_LM_LOSS
    return model


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def load_model(path: str) -> GPT2LMHeadModel:
    """Load a GPT2LMHeadModel from a directory (or a hub name) with the activation it was saved with."""
    from transformers import AutoConfig

    where = f"checkpoint {path}"
    if _is_local(path) and not (Path(path) / "config.json").is_file():
        raise CheckpointError(f"{where} has no config.json: give a folder written by save_pretrained (for example "
                              "RUN_DIR/final) or a GPT-2 hub name")
    try:
        hf = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"{where} could not be read as a Hugging Face model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if hf.model_type != "gpt2":
        raise CheckpointError(f"{where} is a '{hf.model_type}' model; reviveformer trains GPT-2 (model_type gpt2)")
    hf, name, slope = activations.prepare_config_for_transformers(hf)
    try:
        model = GPT2LMHeadModel.from_pretrained(path, config=hf)
    except Exception as e:
        raise CheckpointError(f"{where}: the weights could not be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    activations.set_activation(model, name, slope)
    model.loss_type = CAUSAL_LM_LOSS
    return model


def init_from_checkpoint(cfg: ModelConfig) -> GPT2LMHeadModel:
    """Fine-tuning start: the checkpoint's weights; dropout from the config; an activation swap if asked."""
    assert cfg.init_from
    model = load_model(cfg.init_from)
    saved_name, slope = activations.activation_from_config(model.config)
    if cfg.activation and (cfg.activation != saved_name or (cfg.activation == "leaky_relu" and slope != cfg.leaky_relu_slope)):
        log.warning("model.activation=%s swaps the checkpoint's %s: this changes the function the weights were "
                    "trained for, so expect the loss to rise at first", cfg.activation, saved_name)
        activations.set_activation(model, cfg.activation, cfg.leaky_relu_slope)
    for attr in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, attr, cfg.dropout)
    for module in model.modules():
        if module.__class__.__name__ == "Dropout":
            module.p = cfg.dropout
    return model


def describe(model: GPT2LMHeadModel) -> ModelConfig:
    """The model section that matches a (possibly loaded) model, for the run's resolved config."""
    c = model.config
    name, slope = activations.activation_from_config(c)
    return ModelConfig(n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head, n_positions=c.n_positions,
                       n_inner=c.n_inner, dropout=c.resid_pdrop, activation=name, leaky_relu_slope=slope)


def save_final(model: GPT2LMHeadModel, tokenizer, cfg: Config, out_dir: str | Path) -> Path:
    """save_pretrained (safetensors) + tokenizer + the resolved reviveformer config, into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    save_config(cfg, out / RECIPE_NAME)
    return out


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model) -> str:
    c = model.config
    name, _ = activations.activation_from_config(c)
    return (f"GPT-2 {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, MLP {c.n_inner or 4 * c.n_embd} "
            f"({name}), vocab {c.vocab_size}, {n_trainable(model) / 1e6:.2f}M parameters")
