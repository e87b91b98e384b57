"""GPT-2 models: build one from the config, load a checkpoint (ours, any GPT2LMHeadModel, or a Llama-family
model to fine-tune), save `final/`.

The contract: docs/design.md, "Activations" and the run directory's final/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer import activations, architectures
from reviveformer.architectures import ARCHITECTURES, gpt2, llama
from reviveformer.config import Config, ModelConfig, save_config
from reviveformer.errors import CheckpointError, ConfigError, UserError
from reviveformer.plugins import TRUST_KEY, check_trusted

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
        initializer_range=cfg.initializer_range,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        activation_function="gelu_new",  # replaced just below by the registry's module
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    try:
        model = GPT2LMHeadModel(hf)
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise UserError(_too_large(cfg, vocab_size, e)) from None
    except RuntimeError as e:  # the CPU allocator raises a plain RuntimeError
        if "allocate" not in str(e):
            raise
        raise UserError(_too_large(cfg, vocab_size, e)) from None
    activations.set_activation(model, name, cfg.leaky_relu_slope)
    model.loss_type = CAUSAL_LM_LOSS
    return model


def _too_large(cfg: ModelConfig, vocab_size: int, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (
        f"the model could not be allocated ({first}): model.n_layer={cfg.n_layer}, model.n_embd={cfg.n_embd}, "
        f"model.n_inner={cfg.n_inner} with a vocabulary of {vocab_size} is too large for the memory here; lower "
        "model.n_layer or model.n_embd, or use a machine with more memory"
    )


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def _looks_like_a_path(path: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) can only be a folder."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


# weight file -> the index of its shards (transformers writes one or the other)
WEIGHT_FILES = {
    "model.safetensors": "model.safetensors.index.json",
    "pytorch_model.bin": "pytorch_model.bin.index.json",
}


def _saved_tensors(path: str, keys: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of `keys` stored in a checkpoint's weight files (single or sharded, safetensors or a
    pickle read with weights_only=True), from a folder or the hub cache."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    for weights, index_name in WEIGHT_FILES.items():
        index = cached_file(path, index_name, _raise_exceptions_for_missing_entries=False)
        single = cached_file(path, weights, _raise_exceptions_for_missing_entries=False)
        if index:
            shards = sorted(
                {f for k, f in json.loads(Path(index).read_text())["weight_map"].items() if k in keys}
            )
            files = [cached_file(path, f) for f in shards]
        elif single:
            files = [single]
        else:
            continue
        found: dict[str, torch.Tensor] = {}
        for f in files:
            if f.endswith(".safetensors"):
                with safe_open(f, framework="pt") as st:
                    found.update({k: st.get_tensor(k) for k in st.keys() if k in keys})
            else:
                found.update(
                    {
                        k: v
                        for k, v in torch.load(f, map_location="cpu", weights_only=True).items()
                        if k in keys
                    }
                )
        return found
    return {}


def _restore_activation_state(model: GPT2LMHeadModel, path: str, name: str) -> None:
    """Put the saved parameters of a learned activation (prelu, a user's module) back into the modules that
    `set_activation` just installed: they are built after the weights load, so they start fresh otherwise."""
    wanted = gpt2.activation_state_keys(model)
    if not wanted:
        return
    saved = _saved_tensors(path, wanted)
    if not saved:
        log.warning(
            "checkpoint %s holds no parameters for its activation %s; they start from their initial values",
            path,
            name,
        )
        return
    if set(saved) != wanted:
        raise CheckpointError(
            f"checkpoint {path}: the saved parameters of activation {name} "
            f"({', '.join(sorted(saved))}) do not match what {name} holds now "
            f"({', '.join(sorted(wanted))}); was the activation's code changed since it was saved?"
        )
    try:
        model.load_state_dict(saved, strict=False)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path}: the saved parameters of activation {name} do not fit it "
            f"({str(e).splitlines()[-1].strip()})"
        ) from None


def load_model(
    path: str,
    key: str = "checkpoint",
    *,
    trust_remote_code: bool = False,
    opt_in: str = "load it with trust_remote_code=True",
) -> GPT2LMHeadModel:
    """Load a GPT2LMHeadModel from a directory (or a hub name) with the activation it was saved with,
    including that activation's learned parameters. `key` names the source in messages (model.init_from).

    An activation the checkpoint names as `package.module:attr` is imported only with `trust_remote_code`
    (the user's opt-in for this load; `opt_in` tells them how to give it); otherwise a CheckpointError."""
    where = f"{key} {path}" if key == "checkpoint" else f"{key}={path}"
    hf = _read_hf_config(path, where)
    if hf.model_type != "gpt2":
        return _load_gated(path, hf, where)
    hf, name, slope = activations.prepare_config_for_transformers(hf)
    check_trusted(
        name,
        source=str(Path(path) / "config.json") if _is_local(path) else f"the config.json of hub model {path}",
        key="reviveformer_activation"
        if getattr(hf, "reviveformer_activation", None)
        else "activation_function",
        trusted=trust_remote_code,
        opt_in=opt_in,
    )
    try:
        model = GPT2LMHeadModel.from_pretrained(path, config=hf)
    except Exception as e:
        raise CheckpointError(
            f"{where}: the weights could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    activations.set_activation(model, name, slope)
    _restore_activation_state(model, path, name)
    model.loss_type = CAUSAL_LM_LOSS
    return model


def _read_hf_config(path: str, where: str):
    """The Hugging Face config of the model at `path` (a folder or a hub name), of a model type reviveformer
    reads; a CheckpointError naming `where` otherwise."""
    from transformers import AutoConfig

    if not _is_local(path) and _looks_like_a_path(path):
        raise CheckpointError(
            f"{where} does not exist; give a model folder (RUN_DIR/final or any save_pretrained "
            "folder) or a run directory"
        )
    if _is_local(path) and not (Path(path) / "config.json").is_file():
        raise CheckpointError(
            f"{where} has no config.json: give a folder written by save_pretrained (for example "
            "RUN_DIR/final) or a GPT-2 hub name"
        )
    try:
        hf = AutoConfig.from_pretrained(path)
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not _is_local(path):
            raise CheckpointError(
                f"{where} is not a local folder, and as a hub model name it could not be loaded "
                f"(offline, or no such model: {reason}); give a model folder (RUN_DIR/final, a "
                "save_pretrained folder), a run directory, or a hub name such as gpt2"
            ) from None
        raise CheckpointError(f"{where} could not be read as a Hugging Face model ({reason})") from None
    if hf.model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{where} is a '{hf.model_type}' model; reviveformer reads model types {', '.join(ARCHITECTURES)}"
        )
    return hf


def _load_gated(path: str, hf, where: str):
    """A Llama-family model (gated MLP, reviveformer.architectures.llama) as transformers builds it: its activation is its
    config's `hidden_act`, so reviveformer's activation swap and learned activations do not apply."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=hf)
    except Exception as e:
        raise CheckpointError(
            f"{where}: the weights could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    model.loss_type = CAUSAL_LM_LOSS
    return model


def init_from_checkpoint(cfg: ModelConfig) -> GPT2LMHeadModel:
    """Fine-tuning start: the checkpoint's weights; dropout from the config; an activation swap if asked."""
    assert cfg.init_from
    model = load_model(
        cfg.init_from,
        key="model.init_from",
        trust_remote_code=cfg.trust_remote_code,
        opt_in=f"add {TRUST_KEY}=true",
    )
    if model.config.model_type != "gpt2":
        return _gated_fine_tune_start(model, cfg)
    saved_name, slope = activations.activation_from_config(model.config)
    if cfg.activation and (
        cfg.activation != saved_name or (cfg.activation == "leaky_relu" and slope != cfg.leaky_relu_slope)
    ):
        log.warning(
            "model.activation=%s swaps the checkpoint's %s: this changes the function the weights were "
            "trained for, so expect the loss to rise at first",
            cfg.activation,
            saved_name,
        )
        activations.set_activation(model, cfg.activation, cfg.leaky_relu_slope)
    for attr in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, attr, cfg.dropout)
    for module in model.modules():
        if module.__class__.__name__ == "Dropout":
            module.p = cfg.dropout
    return model


def _gated_fine_tune_start(model, cfg: ModelConfig):
    """init_from_checkpoint for a Llama-family model: its dropout from the config where it has one (attention
    only); its activation is its config's `hidden_act`, which transformers builds into every MLP."""
    own = model.config.hidden_act
    if cfg.activation and cfg.activation != own:
        raise ConfigError(
            f"model.activation={cfg.activation}: model.init_from={cfg.init_from} is a "
            f"'{model.config.model_type}' model with a gated MLP ({own}), and swapping a gated MLP's activation "
            f"is not supported yet; give model.activation={own} or null (the checkpoint's own)"
        )
    if hasattr(model.config, "attention_dropout"):
        llama.set_attention_dropout(model, cfg.dropout)
    # the training setup checks data.block_size against n_positions, GPT-2's name for the trained length
    model.config.n_positions = model.config.max_position_embeddings
    return model


def describe(model: GPT2LMHeadModel) -> ModelConfig:
    """The model section that matches a (possibly loaded) model, for the run's resolved config. A Llama-family
    model's fields map onto the same keys (num_hidden_layers -> n_layer, intermediate_size -> n_inner, ...)."""
    c = model.config
    if c.model_type != "gpt2":
        return ModelConfig(
            n_layer=c.num_hidden_layers,
            n_embd=c.hidden_size,
            n_head=c.num_attention_heads,
            n_positions=c.max_position_embeddings,
            n_inner=c.intermediate_size,
            dropout=getattr(c, "attention_dropout", 0.0),
            activation=c.hidden_act,
            initializer_range=c.initializer_range,
        )
    name, slope = activations.activation_from_config(c)
    return ModelConfig(
        n_layer=c.n_layer,
        n_embd=c.n_embd,
        n_head=c.n_head,
        n_positions=c.n_positions,
        n_inner=c.n_inner,
        dropout=c.resid_pdrop,
        activation=name,
        leaky_relu_slope=slope,
        initializer_range=c.initializer_range,
    )


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
    if c.model_type != "gpt2":
        kind = type(architectures.unwrap(model)).__name__.removesuffix("ForCausalLM")  # Llama, Qwen2, Mistral
        return (
            f"{kind} {c.num_hidden_layers} layers x {c.hidden_size} wide, {c.num_attention_heads} heads, MLP "
            f"{c.intermediate_size} ({c.hidden_act}, gated), vocab {c.vocab_size}, "
            f"{n_trainable(model) / 1e6:.2f}M parameters"
        )
    name, _ = activations.activation_from_config(c)
    return (
        f"GPT-2 {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, MLP {c.n_inner or 4 * c.n_embd} "
        f"({name}), vocab {c.vocab_size}, {n_trainable(model) / 1e6:.2f}M parameters"
    )
