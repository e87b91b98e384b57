"""Re-initialisation of dormant MLP units, shared by ReDo (Sokar et al. 2023) and GraMa (Liu et al. 2025).

The two methods differ only in how they find a dormant unit (activation score, gradient score). What happens
to one is the same, and lives here: fresh incoming weights from the model's own init (normal(0,
initializer_range), GPT-2's and the Llama family's alike; a gated unit's gate and up rows both), a zero bias,
zero outgoing weights (its architecture's `outgoing_weights`), and its optimizer state reset
(`reinitialise_units`). So is the bookkeeping around it (`ReinitReviver`): the units reset per layer, those
dormant at the previous revival and not now, the total over revivals, the revival count that seeds the draws,
and the state that carries them through a checkpoint.

The contract: docs/design.md, "Revival" (ReDo, GraMa).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.architectures import UnitWeight
from reviveformer.ranges import within
from reviveformer.revival.base import Reviver, mlp_layers, mlp_units, model_config, revived_count, unit_index
from reviveformer.revival.optim import reset_adam_state

if TYPE_CHECKING:
    from reviveformer.revival.events import RevivalEvent

# Spreads (seed, revival count) into distinct generator seeds.
SEED_STRIDE = 1_000_003


@torch.no_grad()
def reinitialise_units(
    mlp: nn.Module, idx: torch.Tensor, gen: torch.Generator, std: float, optimizer: Any
) -> None:
    """ReDo's reset of units `idx` of one MLP: fresh incoming weights normal(0, std) drawn from `gen` on the
    CPU (so every process draws the same whatever its device), zero bias, zero outgoing weights (the fresh unit
    starts with no effect on the output, Sokar et al. 2023), and the optimizer state of those entries reset.
    A gated unit has two incoming rows (gate, up) and two biases: each is reset, in that order."""
    if not idx.numel():
        return
    arch = architectures.of(mlp)
    for weight in arch.incoming_weights(mlp):
        w_in = weight.view
        # drawn as (n_in, units) and written transposed: the draw order of the first releases, so a seed still
        # gives the same fresh weights
        fresh = torch.randn((w_in.shape[1], idx.numel()), generator=gen, dtype=torch.float32) * std
        w_in[idx] = fresh.t().to(device=w_in.device, dtype=w_in.dtype)
        _reset_units(optimizer, weight, idx)
    for bias in arch.incoming_biases(mlp):
        bias[idx] = 0
        _reset_units(optimizer, UnitWeight(bias, True), idx)
    for weight in arch.outgoing_weights(mlp):
        weight.view[idx] = 0
        _reset_units(optimizer, weight, idx)


def _reset_units(optimizer: Any, weight: UnitWeight, idx: torch.Tensor) -> None:
    """Reset the optimizer state of units `idx`'s entries of `weight` (and of no other entry)."""
    chosen = torch.zeros(weight.param.shape, dtype=torch.bool, device=weight.param.device)
    weight.unit_rows(chosen)[idx] = True
    reset_adam_state(optimizer, weight.param, chosen)


@dataclass
class TauOptions:
    """A method's config section `revival.<section>` whose one key is the dormancy threshold."""

    section: ClassVar[str]
    """The section's name, for the error message (the method's `name`)."""
    tau: float = field(
        default=0.1,
        # both scores are a unit's over its layer's mean, so the scores of a layer average 1
        metadata=within(
            0, 1, high_open=True, why="at 1 or above even an evenly used layer is re-initialised"
        ),
    )
    """Re-initialise units whose score (ReDo: activation, Sokar et al. 2023; GraMa: gradient, Liu et al. 2025)
    is <= tau; in [0, 1) (the papers: 0 to 0.1)."""

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ValueError(f"revival.{self.section}.tau={self.tau} must be >= 0")


class ReinitReviver(Reviver):
    """A method that re-initialises the units it finds dormant. A subclass scores the units in `revive` and hands
    its decision, per layer, to `_reinitialise`, which edits the model and keeps the counts."""

    layer_metrics = ("dormant_units", "dead_units", "revived_units")
    run_metrics = ("reinitialised_total", "count")

    def __init__(self, tau: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if tau < 0:
            raise ValueError(f"tau={tau} must be >= 0")
        self.tau = tau
        self.seed = seed
        self.revivals = 0
        self.reinitialised_total = 0
        self._prev_dormant: dict[int, list[int]] = {}

    @classmethod
    def from_config(cls, options: TauOptions, *, seed: int = 0) -> ReinitReviver:
        """From the method's section `revival.<name>` and the run's seed."""
        return cls(tau=options.tau, seed=seed)

    @torch.no_grad()
    def _reinitialise(
        self, model: nn.Module, optimizer: Any, decisions: list[tuple[int, list[int], int]], **run: float
    ) -> dict[str, float]:
        """Reset the dormant units of every `(layer, dormant units, dead units)` in `decisions`, in that order,
        count the revival, and return `revive`'s metrics (`run`: the subclass's own run metrics)."""
        mlps = mlp_layers(model)
        std = float(model_config(model).initializer_range)
        # Drawn on the CPU from a generator seeded by (seed, revival count): every process draws the same
        # fresh weights whatever its device, so replicas stay identical.
        gen = torch.Generator(device="cpu").manual_seed(self.seed * SEED_STRIDE + self.revivals)
        details = []
        for i, dormant, dead in decisions:
            mlp = mlps[i]
            idx = unit_index(
                dormant, mlp_units(mlp), architectures.of(mlp).incoming_weights(mlp)[0].param.device
            )
            reinitialise_units(mlp, idx, gen, std, optimizer)
            details.append(
                {
                    "layer": i,
                    "dead_units": dead,
                    "dormant_units": len(dormant),
                    "revived_units": revived_count(self._prev_dormant.get(i), dormant),
                }
            )
            self._prev_dormant[i] = dormant
            self.reinitialised_total += len(dormant)
        self.revivals += 1
        self._details = details
        return self._metrics(
            details, {"reinitialised_total": self.reinitialised_total, "count": self.revivals, **run}
        )

    def state_dict(self) -> dict[str, Any]:
        """Seed, counters and the previous dormant set per layer."""
        return {
            "method": self.name,
            "seed": self.seed,
            "revivals": self.revivals,
            "reinitialised_total": self.reinitialised_total,
            "prev_dormant": {str(i): list(d) for i, d in self._prev_dormant.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        self._check_method(state)
        self.seed = int(state["seed"])
        self.revivals = int(state["revivals"])
        self.reinitialised_total = int(state["reinitialised_total"])
        self._prev_dormant = {int(i): [int(j) for j in d] for i, d in state["prev_dormant"].items()}

    # ------------------------------------------------------------------ how its revivals read (console, pages)

    event_columns = (
        ("dormant units re-initialised", "dormant_units"),
        ("dead units", "dead_units"),
        ("units revived", "revived_units"),
    )

    @classmethod
    def describe(cls, event: RevivalEvent, name: str, when: str = "") -> str:
        """The dormant units it re-initialised, the dead ones among all, and the units revived."""
        return (
            f"{event.heading(name, when)}: {event.dormant_units:,} dormant units re-initialised "
            f"({event.dead_units:,} dead); {event.since()}"
        )

    @classmethod
    def describe_totals(cls, events: Sequence[RevivalEvent], name: str) -> str:
        revived = sum(e.revived_units for e in events)
        return (
            f"{cls._totals_head(events, name)}, {events[-1].reinitialised_total:,} dormant units re-initialised in all, "
            f"{revived:,} units revived"
        )
