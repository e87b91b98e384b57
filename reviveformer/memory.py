"""Will the model fit? The parameter and optimizer memory of a run, estimated from its config before anything
is built, against the memory this process can use.

The estimate counts GPT-2's parameters exactly (the language-model head is tied to the token embedding) and
16 bytes for each: fp32 weights, their gradients and AdamW's two moments. Mixed precision keeps fp32 master
weights under Accelerate's autocast, so it saves nothing here. Activations come on top and are not counted:
the check refuses only what cannot fit at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reviveformer.config import Config, ModelConfig, checkpoint_json
from reviveformer.errors import UserError

BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight + gradient + AdamW exp_avg and exp_avg_sq
GPT2_VOCAB = 50257


def gpt2_params(n_layer: int, n_embd: int, n_inner: int | None, n_positions: int, vocab_size: int) -> int:
    """Parameters of a GPT2LMHeadModel (tied head): embeddings, per block 2 layer norms, attention (query, key
    and value E x 3E, output E x E) and MLP (E x I, I x E) with their biases, and the final layer norm."""
    e, i = n_embd, n_inner or 4 * n_embd
    block = 2 * 2 * e + (3 * e * e + 3 * e) + (e * e + e) + (e * i + i) + (i * e + e)
    return vocab_size * e + n_positions * e + n_layer * block + 2 * e


def _vocab_size(cfg: Config) -> int:
    """The vocabulary the run will embed, as far as it is known before the tokenizer is made."""
    tok = cfg.data.tokenizer
    if tok == "bpe":
        return cfg.data.vocab_size
    if tok == "gpt2":
        return GPT2_VOCAB
    try:  # a tokenizer folder: its vocabulary plus added tokens
        saved = json.loads((Path(tok).expanduser() / "tokenizer.json").read_text())
        return len(saved["model"]["vocab"]) + len(saved.get("added_tokens", []))
    except (OSError, ValueError, KeyError, TypeError):
        return cfg.data.vocab_size


@dataclass
class Estimate:
    params: int
    bytes: int
    source: str  # the keys the sizes come from, for the message


def estimate(cfg: Config) -> Estimate:
    """Parameters and bytes of weights + gradients + AdamW state for the model the run will train."""
    m: ModelConfig = cfg.model
    sizes = dict(
        n_layer=m.n_layer,
        n_embd=m.n_embd,
        n_inner=m.n_inner,
        n_positions=m.n_positions,
        vocab_size=_vocab_size(cfg),
    )
    source = (
        f"model.n_layer={m.n_layer}, model.n_embd={m.n_embd}, model.n_inner={m.n_inner}, "
        f"vocabulary {sizes['vocab_size']}"
    )
    if m.init_from:
        saved = checkpoint_json(m.init_from)
        if saved is None:
            return Estimate(0, 0, f"model.init_from={m.init_from}")  # unknown here; the loader reports it
        sizes = {k: saved.get(k, v) for k, v in sizes.items()}
        source = f"model.init_from={m.init_from}"
    params = gpt2_params(**sizes)
    return Estimate(params, params * BYTES_PER_PARAM, source)


def available_bytes() -> tuple[int, str]:
    """Memory this process can use now: free memory of its GPU, or its share of the machine's free memory
    (processes launched together on one machine each hold a copy of the model)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if torch.cuda.is_available() and not use_cpu:
        device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on cuda:{device}"
    import psutil  # an Accelerate dependency

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    free = psutil.virtual_memory().available
    if local > 1:
        return free // local, f"available to each of {local} processes on this machine"
    return int(free), "available on this machine"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(cfg: Config, available: tuple[int, str] | None = None) -> Estimate:
    """Refuse (UserError) a model whose weights, gradients and optimizer state alone exceed the memory."""
    est = estimate(cfg)
    free, where = available or available_bytes()
    if est.bytes > free:
        raise UserError(
            f"the model is too large for this machine: {est.params / 1e6:,.1f}M parameters ({est.source}) need "
            f"about {_gib(est.bytes)} for weights, gradients and AdamW state ({BYTES_PER_PARAM} bytes per "
            f"parameter), but only {_gib(free)} is {where}; lower model.n_layer or model.n_embd (a model of at "
            f"most {free // BYTES_PER_PARAM / 1e6:,.1f}M parameters fits), or use a machine with more memory"
        )
    return est
