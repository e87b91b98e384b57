"""The gated MLP of the Llama family (transformers `LlamaMLP`, `Qwen2MLP`, `MistralMLP`), in one place: where
the decoder layers are, each layer's MLP, a site's module, and how the MLP's weights are laid out per unit
(design.md, "Weight layout"; the dispatch that picks this module is `reviveformer.architectures.of`).

The MLP computes `down_proj(act_fn(gate_proj(x)) * up_proj(x))` with nn.Linear layers (weight (out, in)). Unit
`j` is one channel of the product:

- two incoming rows, `gate_proj.weight[j, :]` and `up_proj.weight[j, :]` (and `gate_proj.bias[j]`,
  `up_proj.bias[j]` when `mlp_bias` is set);
- one outgoing column, `down_proj.weight[:, j]`.

Sites: `mlp_pre` is the gate's pre-activation (the input of `act_fn`), `mlp_post` the unit's real output, the
product `act_fn(gate) * up` (the input of `down_proj`), `attn_out` the attention block's output (`o_proj`).
"""

from __future__ import annotations

from torch import nn

from reviveformer.architectures.base import (
    SiteLocation,
    UnitWeight,
    locate,
    module_at,
    unit_parameters,
    unwrap,
)

NAME = "gated MLP (Llama family)"

STRIP_REFUSAL: str | None = (
    "synaptic stripping is defined for units with one incoming weight row and a ReLU-like activation (it removes "
    "the most negative incoming weights so that the pre-activation rises above zero again); a gated unit's "
    "output act(gate) * up is silent whenever either factor is near zero, so raising the gate alone does not "
    "revive it. Use revival.method=redo or grama for this model"
)

SITES = {
    "mlp_pre": SiteLocation("mlp.act_fn", "input"),
    # the product act(gate) * up exists only as down_proj's input: no module outputs it
    "mlp_post": SiteLocation("mlp.down_proj", "input"),
    "attn_out": SiteLocation("self_attn.o_proj", "output"),
}


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder layers (`model.layers`) of a LlamaForCausalLM (or LlamaModel; Qwen2, Mistral alike)."""
    model = unwrap(model)
    body = getattr(model, "model", model)
    found = getattr(body, "layers", None)
    if not isinstance(found, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no model.layers[i] decoder layers: reviveformer reads a Llama-family "
            "model as transformers' LlamaForCausalLM lays it out"
        )
    return found


def mlps(model: nn.Module) -> list[nn.Module]:
    """The gated MLP of every decoder layer, in layer order."""
    return [block.mlp for block in blocks(model)]


def block_name(layer: int) -> str:
    """Decoder layer `layer` as the model names it, for messages."""
    return f"model.layers[{layer}]"


def block_module(block: nn.Module, path: str, layer: int) -> nn.Module:
    """The module at dotted `path` inside a decoder layer (a site's module, e.g. `mlp.down_proj`)."""
    return module_at(block, path, block_name(layer))


def site_location(site: str) -> tuple[str, str]:
    """(module path in a decoder layer, `input` or `output`) where `site` is read."""
    return locate(SITES, site, NAME)


def set_mlp_activation(block: nn.Module, act: nn.Module) -> None:
    """Refused: transformers builds a gated MLP's activation from the config's `hidden_act`, and swapping it is
    not supported yet."""
    raise ValueError(f"swapping the activation of a {NAME} is not supported yet")


def set_attention_dropout(model: nn.Module, p: float) -> None:
    """Set the attention dropout of the model's config and of every layer (each reads its own copy at every
    forward)."""
    model.config.attention_dropout = p
    for layer in blocks(model):
        layer.self_attn.attention_dropout = p


def mlp_units(mlp: nn.Module) -> int:
    """The number of units (`intermediate_size`): the output width of `gate_proj`."""
    return int(mlp.gate_proj.weight.shape[0])


def width(block: nn.Module, units: str) -> int:
    """A layer's width by the site registry's names: `n_inner` (MLP units) or `n_embd` (hidden size)."""
    if units == "n_inner":
        return mlp_units(block.mlp)
    if units == "n_embd":
        return int(block.self_attn.o_proj.weight.shape[0])
    raise ValueError(f"unknown width {units!r}: n_inner or n_embd")


def incoming_weights(mlp: nn.Module) -> list[UnitWeight]:
    """The gate's and the up projection's weights, (units, hidden) each: row j of both is unit j's."""
    return [UnitWeight(mlp.gate_proj.weight, True), UnitWeight(mlp.up_proj.weight, True)]


def incoming_biases(mlp: nn.Module) -> list[nn.Parameter]:
    """The gate's and the up projection's biases, (units,) each (none without `mlp_bias`)."""
    return [b for b in (mlp.gate_proj.bias, mlp.up_proj.bias) if b is not None]


def outgoing_weights(mlp: nn.Module) -> list[UnitWeight]:
    """`down_proj.weight`, (hidden, units): column j is unit j's outgoing weights."""
    return [UnitWeight(mlp.down_proj.weight, False)]


def per_unit_parameters(mlp: nn.Module) -> int:
    """Trainable parameters that belong to one unit alone: its two incoming rows (and biases) and its outgoing
    column (those of a frozen matrix do not count)."""
    return unit_parameters(incoming_weights(mlp), incoming_biases(mlp), outgoing_weights(mlp))
