"""What every architecture shares: the site registry, a weight matrix seen one row per unit, and what an
architecture module provides (design.md, "Liveness: the definitions" and "Weight layout").

A site (`Site`) is a tensor of every block where liveness is read: its name and its width, the same in every
architecture. Where a block holds that tensor is each architecture's own: every architecture module maps site
names to a `SiteLocation` (a module of the block, and whether its input or its output is read) in its `SITES`.
Config validation, the liveness monitor's counting, the figures, sweep and compare read this registry, so a new
site is one `Site` here plus its location in each architecture (or one `reviveformer.architectures.register_site`
call for a site of one's own). Registry order is the order sites are reported and drawn in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from transformers import PreTrainedModel

READS = ("input", "output")
WIDTHS = ("n_inner", "n_embd")


@dataclass(frozen=True)
class Site:
    """One tensor of every block where activations are counted."""

    name: str
    """The `liveness.sites` value, and the `<site>` of the liveness metric names."""
    units: str
    """The site's width as the model section names it: `n_inner` (MLP units) or `n_embd` (residual stream)."""
    description: str
    """One line for people: what the tensor is."""

    def __post_init__(self) -> None:
        if self.units not in WIDTHS:
            raise ValueError(f"site {self.name!r}: units={self.units!r} must be one of {', '.join(WIDTHS)}")


@dataclass(frozen=True)
class SiteLocation:
    """Where an architecture's block holds a site's tensor."""

    module: str
    """Dotted path of the module inside a block (resolved by the architecture's `block_module`)."""
    reads: str
    """`input` or `output`: which tensor of that module is counted (its first positional input)."""

    def __post_init__(self) -> None:
        if self.reads not in READS:
            raise ValueError(f"reads={self.reads!r} must be one of {', '.join(READS)}")


_REGISTRY: dict[str, Site] = {}


def add_site(site: Site) -> Site:
    """Add `site` to the registry alone (its name must be new); `architectures.register_site` also places it in
    the architectures."""
    if site.name in _REGISTRY:
        raise ValueError(f"site {site.name!r} is already registered")
    _REGISTRY[site.name] = site
    return site


def remove_site(name: str) -> None:
    """Remove a registered site from the registry."""
    del _REGISTRY[name]


def site_names() -> tuple[str, ...]:
    """The registered sites' names, in registry order."""
    return tuple(_REGISTRY)


def get_site(name: str) -> Site:
    """The registered site `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown site {name!r}: one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def site_order(names: Iterable[str]) -> list[str]:
    """`names` in registry order, then any unregistered ones (read from another run's files) alphabetically."""
    names = set(names)
    return [s for s in _REGISTRY if s in names] + sorted(names - set(_REGISTRY))


add_site(Site("mlp_pre", "n_inner", "the input of the MLP activation (the units' pre-activation)"))
add_site(Site("mlp_post", "n_inner", "the output of each MLP unit, what the MLP's output projection reads"))
add_site(Site("attn_out", "n_embd", "the output of the attention block, before the residual add"))

MLP_SITE = "mlp_post"
"""The site whose dead units define effective capacity and revival's dead set (design.md)."""


def locate(sites: dict[str, SiteLocation], site: str, arch_name: str) -> tuple[str, str]:
    """(module path in a block, `input` or `output`) of `site` in an architecture's `sites` map."""
    found = sites.get(site)
    if found is None:
        get_site(site)  # an unknown name is named as such
        raise ValueError(
            f"site {site!r} has no location in a {arch_name} block: register it with its module there "
            "(reviveformer.architectures.register_site)"
        )
    return found.module, found.reads


def module_at(block: nn.Module, path: str, where: str) -> nn.Module:
    """The module at dotted `path` inside a block; `where` names the block in the message."""
    found: object = block
    for part in path.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, nn.Module):
        raise ValueError(f"{where}.{path} is a {type(found).__name__}, not an nn.Module")
    return found


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any DDP / torch.compile wrapper. A transformers model is no wrapper and comes back as it
    is, without Accelerate's search for compiled submodules (a walk over every module, at every per-log report)."""
    if isinstance(model, PreTrainedModel):
        return model
    return extract_model_from_parallel(model, keep_torch_compile=False)


def unit_rows(like: Tensor, units_first: bool) -> Tensor:
    """`like` as (units, other): itself when its units come first, else its transpose (a view, writes through)."""
    return like if units_first else like.t()


@dataclass(frozen=True)
class UnitWeight:
    """A weight matrix of an MLP with one row (`units_first`) or one column per unit."""

    param: nn.Parameter
    units_first: bool
    """True: the parameter is (units, other), as nn.Linear's incoming weight; False: (other, units)."""

    def unit_rows(self, like: Tensor) -> Tensor:
        """`like` (shaped like the parameter: a mask, a gradient) as (units, other): a view, writes through."""
        return unit_rows(like, self.units_first)

    @property
    def view(self) -> Tensor:
        """The parameter as (units, other): row j is unit j's entries (writes through)."""
        return self.unit_rows(self.param)


def unit_parameters(
    incoming: list[UnitWeight], biases: list[nn.Parameter], outgoing: list[UnitWeight]
) -> int:
    """Trainable parameters that belong to one unit alone: its entries of each weight and bias (those of a frozen
    matrix do not count)."""
    n = sum(w.view.shape[1] for w in (*incoming, *outgoing) if w.param.requires_grad)
    return n + sum(1 for b in biases if b.requires_grad)


class Architecture(Protocol):
    """What an architecture module provides (module-level functions and constants)."""

    NAME: str
    """For messages: "GPT-2", "gated MLP (Llama family)"."""
    STRIP_REFUSAL: str | None
    """None when synaptic stripping is defined for its units, else why not (shown to the user)."""
    SITES: dict[str, SiteLocation]
    """Site name -> where a block holds it."""

    def blocks(self, model: nn.Module) -> nn.ModuleList: ...
    def mlps(self, model: nn.Module) -> list[nn.Module]: ...
    def block_name(self, layer: int) -> str: ...
    def block_module(self, block: nn.Module, path: str, layer: int) -> nn.Module: ...
    def site_location(self, site: str) -> tuple[str, str]: ...
    def width(self, block: nn.Module, units: str) -> int: ...
    def mlp_units(self, mlp: nn.Module) -> int: ...
    def set_mlp_activation(self, block: nn.Module, act: nn.Module) -> None: ...
    def incoming_weights(self, mlp: nn.Module) -> list[UnitWeight]: ...
    def incoming_biases(self, mlp: nn.Module) -> list[nn.Parameter]: ...
    def outgoing_weights(self, mlp: nn.Module) -> list[UnitWeight]: ...
    def per_unit_parameters(self, mlp: nn.Module) -> int: ...
