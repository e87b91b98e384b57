"""GPT-2's structure, in one place: where the blocks are, each block's MLP and activation, a site's module, and
how the MLP's weights are laid out per unit (design.md, "Weight layout").

Everything else (liveness, activations, capacity, revival) asks this module instead of walking
`model.transformer.h` or indexing `c_fc.weight` itself. This is the one place a future model with `nn.Linear`
MLPs (weights stored (out, in), the transpose of GPT-2's `Conv1D`) or a sharded weight (FSDP, whose local
parameter is a flat shard) would be handled: today only whole, unsharded GPT-2 `Conv1D` weights are.

Layout, for MLP unit `j` of a block (Conv1D stores `weight` as (in, out)):

- incoming weights `c_fc.weight[:, j]`, bias `c_fc.bias[j]`: row `j` of `incoming(mlp)`, entry `j` of
  `incoming_bias(mlp)`;
- outgoing weights `c_proj.weight[j, :]`: row `j` of `outgoing(mlp)`.

The views write through to the parameters, so `incoming(mlp)[j] = 0` zeroes unit j's incoming weights.
"""

from __future__ import annotations

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from transformers import PreTrainedModel

from reviveformer.sites import get_site
from reviveformer.unit_weight import UnitWeight

ACT_STATE_KEY = ".mlp.act."
"""Part of every state-dict key of the MLP activations' own parameters and buffers (`transformer.h.<i>.mlp.act.*`)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any DDP / torch.compile wrapper. A transformers model is no wrapper and comes back as it
    is, without Accelerate's search for compiled submodules (a walk over every module, at every per-log report)."""
    if isinstance(model, PreTrainedModel):
        return model
    return extract_model_from_parallel(model, keep_torch_compile=False)


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


def block_module(block: nn.Module, path: str, layer: int) -> nn.Module:
    """The module at dotted `path` inside a block (a site's module, e.g. `mlp.act` or `attn.c_proj`)."""
    found: object = block
    for part in path.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, nn.Module):
        raise ValueError(f"transformer.h[{layer}].{path} is a {type(found).__name__}, not an nn.Module")
    return found


def mlp_activation(block: nn.Module) -> nn.Module:
    """The MLP activation module of a block (`mlp.act`)."""
    return block.mlp.act


def set_mlp_activation(block: nn.Module, act: nn.Module) -> None:
    """Install `act` as the block's MLP activation, beside the MLP's weights (device and dtype)."""
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


def by_unit(fc_like: Tensor) -> Tensor:
    """A tensor laid out like `c_fc.weight` (a pruning mask, a gradient) as (units, in): row j is unit j's
    incoming entries. A view (Conv1D stores (in, out), so this is the transpose)."""
    return fc_like.t()


def by_unit_out(proj_like: Tensor) -> Tensor:
    """A tensor laid out like `c_proj.weight` (a mask, a gradient) as (units, n_embd): row j is unit j's outgoing
    entries (Conv1D's (in, out) already has the units first: the tensor itself)."""
    return proj_like


def incoming(mlp: nn.Module) -> Tensor:
    """Incoming weights per unit, (units, n_embd): row j is `c_fc.weight[:, j]` (a view that writes through)."""
    return by_unit(mlp.c_fc.weight)


def incoming_bias(mlp: nn.Module) -> Tensor | None:
    """Incoming bias per unit, (units,): `c_fc.bias` (None without one)."""
    return mlp.c_fc.bias


def outgoing(mlp: nn.Module) -> Tensor:
    """Outgoing weights per unit, (units, n_embd): row j is `c_proj.weight[j, :]` (a view that writes through)."""
    return by_unit_out(mlp.c_proj.weight)


def per_unit_parameters(mlp: nn.Module) -> int:
    """Trainable parameters that belong to one MLP unit alone: its incoming weights and bias and its outgoing
    weights (those of a frozen matrix do not count)."""
    fc, proj = mlp.c_fc, mlp.c_proj
    n = 0
    if fc.weight.requires_grad:
        n += incoming(mlp).shape[1]
    if fc.bias is not None and fc.bias.requires_grad:
        n += 1
    if proj.weight.requires_grad:
        n += outgoing(mlp).shape[1]
    return n


NAME = "GPT-2"

STRIP_REFUSAL: str | None = None
"""Synaptic stripping is defined for GPT-2's single-input units (design.md, "Revival")."""


def site_location(site: str) -> tuple[str, str]:
    """(module path in a block, `input` or `output`) where `site` is read: the registry's own (sites.py)."""
    found = get_site(site)
    return found.module, found.reads


def incoming_weights(mlp: nn.Module) -> list[UnitWeight]:
    """`c_fc.weight`, (in, units) as Conv1D stores it: column j is unit j's incoming weights."""
    return [UnitWeight(mlp.c_fc.weight, False)]


def incoming_biases(mlp: nn.Module) -> list[nn.Parameter]:
    """`c_fc.bias` (none without one)."""
    return [mlp.c_fc.bias] if mlp.c_fc.bias is not None else []


def outgoing_weights(mlp: nn.Module) -> list[UnitWeight]:
    """`c_proj.weight`, (units, n_embd): row j is unit j's outgoing weights."""
    return [UnitWeight(mlp.c_proj.weight, True)]
