"""Which model structure a model has, in one place: the architecture dispatch.

Everything that walks a model's blocks or edits its MLP units (liveness, revival, audit, strip) asks
`of(model)` for the module that knows that model's structure, chosen by the model's `config.model_type`, instead
of reaching into GPT-2 (or any one model) itself. Each such module (`reviveformer.gpt2`, `reviveformer.llama`)
implements the functions of `Architecture`; a third architecture is one more module and one line in
`ARCHITECTURES`.

Per-unit weights are described by `UnitWeight`: one weight matrix with one row or column per MLP unit, and how to
see it (or any tensor laid out like it: a mask, a gradient) as (units, other). A GPT-2 unit has one incoming
matrix (`c_fc`, Conv1D (in, out)); a gated (Llama-family) unit has two (`gate_proj`, `up_proj`, nn.Linear (out,
in)). Revival loops over them, so it needs no architecture of its own (design.md, "Weight layout").
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol, cast

from torch import nn
from transformers import PreTrainedModel

from reviveformer import gpt2, llama
from reviveformer.gpt2 import unwrap
from reviveformer.unit_weight import UnitWeight

__all__ = ["ARCHITECTURES", "Architecture", "UnitWeight", "of", "model_type", "unwrap"]


class Architecture(Protocol):
    """What a structure module provides (module-level functions and constants)."""

    NAME: str
    """For messages: "GPT-2", "gated MLP (Llama family)"."""
    STRIP_REFUSAL: str | None
    """None when synaptic stripping is defined for its units, else why not (shown to the user)."""

    def blocks(self, model: nn.Module) -> nn.ModuleList: ...
    def mlps(self, model: nn.Module) -> list[nn.Module]: ...
    def block_module(self, block: nn.Module, path: str, layer: int) -> nn.Module: ...
    def site_location(self, site: str) -> tuple[str, str]: ...
    def width(self, block: nn.Module, units: str) -> int: ...
    def mlp_units(self, mlp: nn.Module) -> int: ...
    def incoming_weights(self, mlp: nn.Module) -> list[UnitWeight]: ...
    def incoming_biases(self, mlp: nn.Module) -> list[nn.Parameter]: ...
    def outgoing_weights(self, mlp: nn.Module) -> list[UnitWeight]: ...
    def per_unit_parameters(self, mlp: nn.Module) -> int: ...


ARCHITECTURES: dict[str, ModuleType] = {
    "gpt2": gpt2,
    # transformers' LlamaMLP, Qwen2MLP and MistralMLP are the same gated MLP under the same attribute names
    "llama": llama,
    "qwen2": llama,
    "mistral": llama,
}


def model_type(model: nn.Module) -> str | None:
    """The `config.model_type` of a possibly wrapped model (None: a module without a Hugging Face config)."""
    config = getattr(model if isinstance(model, PreTrainedModel) else unwrap(model), "config", None)
    return getattr(config, "model_type", None)


def of(model: nn.Module) -> Architecture:
    """The structure module of `model` (or of one of its MLPs), by its `config.model_type`. A module without a
    config is taken for GPT-2, whose own checks then say what is missing: a GPT2MLP keeps no config, while the
    Llama family's MLPs keep their model's, so revival code that holds only an MLP finds its architecture too."""
    kind = model_type(model)
    if kind is None:
        return cast(Architecture, gpt2)
    found = ARCHITECTURES.get(kind)
    if found is None:
        raise ValueError(
            f"{type(unwrap(model)).__name__} is a '{kind}' model; reviveformer knows model types "
            f"{', '.join(ARCHITECTURES)}"
        )
    return cast(Architecture, found)
