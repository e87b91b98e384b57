"""The site registry: where in a GPT-2 block liveness is read (design.md, "Liveness: the definitions").

A site is one `Site` entry: the module of the block it is read at (a dotted path that `reviveformer.gpt2`
resolves), whether it is that module's input or output, and its width. Config validation, the liveness
monitor's counting, the figures, sweep and compare all read this registry, so a new site is one `register_site`
call here (plus its row in design.md's site table). Registry order is the order sites are reported and drawn in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

READS = ("input", "output")
WIDTHS = ("n_inner", "n_embd")


@dataclass(frozen=True)
class Site:
    """One place in every block where activations are counted."""

    name: str
    """The `liveness.sites` value, and the `<site>` of the liveness metric names."""
    module: str
    """Dotted path of the module inside a block, e.g. `mlp.act` (resolved by reviveformer.gpt2)."""
    reads: str
    """`input` or `output`: which tensor of that module is counted (its first positional input)."""
    units: str
    """The site's width as the model config names it: `n_inner` (MLP units) or `n_embd`."""
    description: str
    """One line for people: what the tensor is."""

    def __post_init__(self) -> None:
        if self.reads not in READS:
            raise ValueError(f"site {self.name!r}: reads={self.reads!r} must be one of {', '.join(READS)}")
        if self.units not in WIDTHS:
            raise ValueError(f"site {self.name!r}: units={self.units!r} must be one of {', '.join(WIDTHS)}")


_REGISTRY: dict[str, Site] = {}


def register_site(site: Site) -> Site:
    """Add a site (its name, and its module and tensor, must be new)."""
    if site.name in _REGISTRY:
        raise ValueError(f"site {site.name!r} is already registered")
    for other in _REGISTRY.values():
        # one module tensor, one site: a probe hands each watched tensor to exactly one site's counters
        if (other.module, other.reads) == (site.module, site.reads):
            raise ValueError(
                f"site {site.name!r} reads the {site.reads} of {site.module}, as {other.name!r} does"
            )
    _REGISTRY[site.name] = site
    return site


def unregister_site(name: str) -> None:
    """Remove a registered site (for tests that register their own)."""
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


register_site(
    Site("mlp_pre", "mlp.act", "input", "n_inner", "the input of the MLP activation (output of mlp.c_fc)")
)
register_site(Site("mlp_post", "mlp.act", "output", "n_inner", "the output of the MLP activation"))
register_site(
    Site(
        "attn_out",
        "attn.c_proj",
        "output",
        "n_embd",
        "the output of the attention block (attn.c_proj), before the residual add",
    )
)

MLP_SITE = "mlp_post"
"""The site whose dead units define effective capacity and revival's dead set (design.md)."""
