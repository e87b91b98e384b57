"""GPT-2's structure, in one place: where the blocks are, each block's MLP and activation, where each site is
read, and how the MLP's weights are laid out per unit (design.md, "Weight layout").

Everything else (liveness, activations, capacity, revival) asks this module, through `architectures.of(model)`,
instead of walking `model.transformer.h` or indexing `c_fc.weight` itself. Only whole, unsharded `Conv1D`
weights are handled: a sharded weight (FSDP, whose local parameter is a flat shard) would be handled here.

Layout, for MLP unit `j` of a block (Conv1D stores `weight` as (in, out)):

- incoming weights `c_fc.weight[:, j]`, bias `c_fc.bias[j]`;
- outgoing weights `c_proj.weight[j, :]`.

`incoming_weights(mlp)[0].view[j]` and `outgoing_weights(mlp)[0].view[j]` are those entries as views that write
through to the parameters.
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

NAME = "GPT-2"

STRIP_REFUSAL: str | None = None
"""Synaptic stripping is defined for GPT-2's single-input units (design.md, "Revival")."""

SITES = {
    "mlp_pre": SiteLocation("mlp.act", "input"),  # the output of mlp.c_fc
    "mlp_post": SiteLocation("mlp.act", "output"),
    "attn_out": SiteLocation("attn.c_proj", "output"),  # before the residual add
}

ACT_STATE_KEY = ".mlp.act."
"""Part of every state-dict key of the MLP activations' own parameters and buffers (`transformer.h.<i>.mlp.act.*`)."""


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks (`transformer.h`) of a GPT2LMHeadModel or GPT2Model, possibly wrapped."""
    model = unwrap(model)
    body = getattr(model, "transformer", model)
    found = getattr(body, "h", None)
    if not isinstance(found, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} is not a GPT-2 model: reviveformer needs model.transformer.h[i] blocks "
            "(a transformers GPT2LMHeadModel or GPT2Model)"
        )
    return found


def mlps(model: nn.Module) -> list[nn.Module]:
    """The MLP (`GPT2MLP`) of every block, in layer order."""
    return [block.mlp for block in blocks(model)]


def block_name(layer: int) -> str:
    """Block `layer` as the model names it, for messages."""
    return f"transformer.h[{layer}]"


def block_module(block: nn.Module, path: str, layer: int) -> nn.Module:
    """The module at dotted `path` inside a block (a site's module, e.g. `mlp.act` or `attn.c_proj`)."""
    return module_at(block, path, block_name(layer))


def site_location(site: str) -> tuple[str, str]:
    """(module path in a block, `input` or `output`) where `site` is read."""
    return locate(SITES, site, NAME)


def activation_state_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the MLP activations' own parameters and buffers (a learned activation's)."""
    return {k for k in model.state_dict() if ACT_STATE_KEY in k}


def set_mlp_activation(block: nn.Module, act: nn.Module) -> None:
    """Install `act` as the block's MLP activation (`mlp.act`), beside the MLP's weights (device and dtype)."""
    ref = block.mlp.c_fc.weight
    # a custom activation may hold parameters: put them beside the MLP's own (a no-op otherwise)
    block.mlp.act = act.to(device=ref.device, dtype=ref.dtype)


def out_features(module: nn.Module) -> int:
    """Output width of a Conv1D (`nf`; its weight is (in, out)) or an nn.Linear (weight (out, in))."""
    nf = getattr(module, "nf", None)
    return int(nf) if nf is not None else int(module.weight.shape[0])


def mlp_units(mlp: nn.Module) -> int:
    """The number of units of an MLP (`n_inner`): the output width of `c_fc`."""
    return out_features(mlp.c_fc)


def width(block: nn.Module, units: str) -> int:
    """A block's width named as in the model config: `n_inner` (MLP units) or `n_embd` (residual stream)."""
    if units == "n_inner":
        return mlp_units(block.mlp)
    if units == "n_embd":
        return out_features(block.attn.c_proj)
    raise ValueError(f"unknown width {units!r}: n_inner or n_embd")


def incoming_weights(mlp: nn.Module) -> list[UnitWeight]:
    """`c_fc.weight`, (in, units) as Conv1D stores it: column j is unit j's incoming weights."""
    return [UnitWeight(mlp.c_fc.weight, False)]


def incoming_biases(mlp: nn.Module) -> list[nn.Parameter]:
    """`c_fc.bias` (none without one)."""
    return [mlp.c_fc.bias] if mlp.c_fc.bias is not None else []


def outgoing_weights(mlp: nn.Module) -> list[UnitWeight]:
    """`c_proj.weight`, (units, n_embd): row j is unit j's outgoing weights."""
    return [UnitWeight(mlp.c_proj.weight, True)]


def per_unit_parameters(mlp: nn.Module) -> int:
    """Trainable parameters that belong to one MLP unit alone: its incoming weights and bias and its outgoing
    weights (those of a frozen matrix do not count)."""
    return unit_parameters(incoming_weights(mlp), incoming_biases(mlp), outgoing_weights(mlp))
