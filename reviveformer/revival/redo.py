"""ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning"): re-initialise
dormant MLP units.

A unit of layer i is dormant when its score `dormancy[j] <= tau` at `mlp_post` (a score that is NaN or
missing, as when the whole layer is silent, counts as dormant). Each dormant unit gets fresh incoming weights
from the model's own init (GPT-2: normal(0, initializer_range) for Conv1D), a zero bias, zero outgoing weights
(`c_proj.weight[j, :]`), and its optimizer state reset. With zero outgoing weights the unit contributes
nothing right after revival; the model's output is exactly unchanged when the unit's activation was exactly
zero (a dead ReLU unit), and otherwise loses the unit's small (score <= tau) contribution, as in the paper.

Metrics returned by `revive` (totals, and per layer as `revival/layer_<i>/<name>` for the first three):

- `revival/dormant_units`: dormant units at `mlp_post`, i.e. units re-initialised by this revival.
- `revival/dead_units`: dead units in the same report (same meaning as for stripping, for comparing arms).
- `revival/revived_units`: units dormant at the previous revival and not dormant now.
- `revival/reinitialised_total`: unit re-initialisations over all revivals so far.
- `revival/count`: revivals so far.

The contract: docs/design.md, "Revival" (ReDo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reviveformer import gpt2
from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import (
    Reviver,
    mlp_layers,
    model_config,
    revived_count,
    site_layers,
    unit_index,
)
from reviveformer.revival.optim import reset_adam_state

# Spreads (seed, revival count) into distinct generator seeds.
SEED_STRIDE = 1_000_003


def dormant_units(scores: list[float | None], tau: float) -> list[int]:
    """Units whose ReDo score is <= tau (Sokar et al. 2023); NaN/None (a silent layer) counts as dormant."""
    return [j for j, s in enumerate(scores) if s is None or math.isnan(s) or s <= tau]


@torch.no_grad()
def reinitialise_units(
    mlp: nn.Module, idx: torch.Tensor, gen: torch.Generator, std: float, optimizer: Any
) -> None:
    """ReDo's reset of units `idx` of one GPT2MLP: fresh incoming weights normal(0, std) drawn from `gen` on the
    CPU (so every process draws the same whatever its device), zero bias, zero outgoing weights (the fresh unit
    starts with no effect on the output, Sokar et al. 2023), and the optimizer state of those entries reset."""
    if not idx.numel():
        return
    c_fc, c_proj = mlp.c_fc, mlp.c_proj
    w_in, bias = gpt2.incoming(mlp), gpt2.incoming_bias(mlp)
    n_units, n_in = w_in.shape
    # drawn as (n_in, units) and written transposed: the draw order of the first releases, so a seed still
    # gives the same fresh weights
    fresh = torch.randn((n_in, idx.numel()), generator=gen, dtype=torch.float32) * std
    w_in[idx] = fresh.t().to(device=w_in.device, dtype=w_in.dtype)
    chosen = torch.zeros(c_fc.weight.shape, dtype=torch.bool, device=c_fc.weight.device)
    gpt2.by_unit(chosen)[idx] = True
    reset_adam_state(optimizer, c_fc.weight, chosen)
    if bias is not None:
        bias[idx] = 0
        unit = torch.zeros(n_units, dtype=torch.bool, device=bias.device)
        unit[idx] = True
        reset_adam_state(optimizer, bias, unit)
    gpt2.outgoing(mlp)[idx] = 0
    chosen = torch.zeros(c_proj.weight.shape, dtype=torch.bool, device=c_proj.weight.device)
    gpt2.by_unit_out(chosen)[idx] = True
    reset_adam_state(optimizer, c_proj.weight, chosen)


@dataclass
class ReDoOptions:
    """The config section `revival.redo`."""

    tau: float = 0.1
    """Re-initialise units whose activation score (Sokar et al. 2023) is <= tau."""

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ValueError(f"revival.redo.tau={self.tau} must be >= 0")


class ReDo(Reviver):
    """ReDo re-initialisation of dormant MLP units (Sokar et al. 2023)."""

    name = "redo"
    arm = "redo"
    Options = ReDoOptions
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
    def from_config(cls, options: ReDoOptions, *, seed: int = 0) -> ReDo:
        """From `revival.redo` and the run's seed."""
        return cls(tau=options.tau, seed=seed)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Re-initialise every dormant unit at `mlp_post` and reset its optimizer state. A report that saw no
        tokens measured nothing: no unit is taken for dormant."""
        mlps = mlp_layers(model)
        std = float(model_config(model).initializer_range)
        # Drawn on the CPU from a generator seeded by (seed, revival count): every process draws the same
        # fresh weights whatever its device, so replicas stay identical.
        gen = torch.Generator(device="cpu").manual_seed(self.seed * SEED_STRIDE + self.revivals)
        details = []
        for entry in site_layers(report, mlps, self.name):
            i = entry.layer
            n_units = gpt2.mlp_units(mlps[i])
            if len(entry.dormancy) != n_units:
                raise ValueError(
                    f"revival.method=redo needs one dormancy score per unit: the report has "
                    f"{len(entry.dormancy)} in layer {i}, the model {n_units} units"
                )
            dormant = dormant_units(entry.dormancy, self.tau) if report.tokens > 0 else []
            device = gpt2.incoming(mlps[i]).device
            reinitialise_units(mlps[i], unit_index(dormant, n_units, device), gen, std, optimizer)
            details.append(
                {
                    "layer": i,
                    "dead_units": len(set(entry.dead_units)),
                    "dormant_units": len(dormant),
                    "revived_units": revived_count(self._prev_dormant.get(i), dormant),
                }
            )
            self._prev_dormant[i] = dormant
            self.reinitialised_total += len(dormant)
        self.revivals += 1
        self._details = details
        return self._metrics(
            details, {"reinitialised_total": self.reinitialised_total, "count": self.revivals}
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
