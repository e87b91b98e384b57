"""Model structures, in one package: which architecture a model has, and what it knows.

Everything that walks a model's blocks, reads a site or edits its MLP units (liveness, revival, activations,
audit, strip) asks `of(model)` for the module that knows that model's structure, chosen by the model's
`config.model_type`, instead of reaching into GPT-2 (or any one model) itself. Each such module (`gpt2`,
`llama`) implements the functions of `base.Architecture` and maps every site to the module of a block that
holds it (`SITES`); a third architecture is one more module and one line in `ARCHITECTURES`.

Per-unit weights are described by `UnitWeight`: one weight matrix with one row or column per MLP unit, and how to
see it (or any tensor laid out like it: a mask, a gradient) as (units, other). A GPT-2 unit has one incoming
matrix (Conv1D, (in, out)); a gated (Llama-family) unit has two (nn.Linear, (out, in)). Revival loops over them,
so it needs no architecture of its own (design.md, "Weight layout").
"""

from __future__ import annotations

from types import ModuleType
from typing import cast

from torch import nn
from transformers import PreTrainedModel

from reviveformer.architectures import gpt2, llama
from reviveformer.architectures.base import (
    MLP_SITE,
    Architecture,
    Site,
    SiteLocation,
    UnitWeight,
    add_site,
    get_site,
    remove_site,
    site_names,
    site_order,
    unwrap,
)

__all__ = [
    "ARCHITECTURES",
    "MLP_SITE",
    "Architecture",
    "Site",
    "SiteLocation",
    "UnitWeight",
    "get_site",
    "model_type",
    "of",
    "register_site",
    "site_names",
    "site_order",
    "unregister_site",
    "unwrap",
]

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


def register_site(site: Site, **locations: SiteLocation) -> Site:
    """Add a site of one's own, read where `locations` says in each architecture named by its model type, e.g.
    `register_site(Site("ln2_out", "n_embd", "..."), gpt2=SiteLocation("ln_2", "output"))`. Its name must be new,
    and so must each location: a probe hands each watched tensor to exactly one site's counters."""
    unknown = sorted(set(locations) - set(ARCHITECTURES))
    if unknown:
        raise ValueError(
            f"site {site.name!r}: no architecture {', '.join(unknown)}; one of {', '.join(ARCHITECTURES)}"
        )
    if site.name in site_names():
        raise ValueError(f"site {site.name!r} is already registered")
    for kind, where in locations.items():
        for other, taken in ARCHITECTURES[kind].SITES.items():
            if taken == where:
                raise ValueError(
                    f"site {site.name!r} reads the {where.reads} of {where.module}, as {other!r} does"
                )
    add_site(site)
    for kind, where in locations.items():
        ARCHITECTURES[kind].SITES[site.name] = where
    return site


def unregister_site(name: str) -> None:
    """Remove a registered site, and its location from every architecture (for tests that register their own)."""
    remove_site(name)
    for arch in set(ARCHITECTURES.values()):
        arch.SITES.pop(name, None)
