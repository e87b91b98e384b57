"""ReDo (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning"): re-initialise
dormant MLP units.

A unit of layer i is dormant when its score `dormancy[j] <= tau` at `mlp_post` (a score that is NaN or
missing, as when the whole layer is silent, counts as dormant). Each dormant unit gets fresh incoming weights
from the model's own init (normal(0, initializer_range)), a zero bias, zero outgoing weights (its
architecture's `outgoing_weights`), and its optimizer state reset (`reviveformer.revival.reinit`, shared with
GraMa).
With zero outgoing weights the unit contributes nothing right after revival; the model's output is exactly
unchanged when the unit's activation was exactly zero (a dead ReLU unit), and otherwise loses the unit's small
(score <= tau) contribution, as in the paper.

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

from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import mlp_layers, mlp_units, site_layers
from reviveformer.revival.reinit import ReinitReviver, TauOptions


def dormant_units(scores: list[float | None], tau: float) -> list[int]:
    """Units whose ReDo score is <= tau (Sokar et al. 2023); NaN/None (a silent layer) counts as dormant."""
    return [j for j, s in enumerate(scores) if s is None or math.isnan(s) or s <= tau]


@dataclass
class ReDoOptions(TauOptions):
    """The config section `revival.redo`: `tau` on the activation score (Sokar et al. 2023)."""

    section = "redo"


class ReDo(ReinitReviver):
    """ReDo re-initialisation of dormant MLP units (Sokar et al. 2023)."""

    name = "redo"
    arm = "redo"
    Options = ReDoOptions

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Re-initialise every dormant unit at `mlp_post` and reset its optimizer state. A report that saw no
        tokens measured nothing: no unit is taken for dormant."""
        mlps = mlp_layers(model)
        decisions = []
        for entry in site_layers(report, mlps, self.name):
            n_units = mlp_units(mlps[entry.layer])
            if len(entry.dormancy) != n_units:
                raise ValueError(
                    f"revival.method=redo needs one dormancy score per unit: the report has "
                    f"{len(entry.dormancy)} in layer {entry.layer}, the model {n_units} units"
                )
            dormant = dormant_units(entry.dormancy, self.tau) if report.tokens > 0 else []
            decisions.append((entry.layer, dormant, len(set(entry.dead_units))))
        return self._reinitialise(model, optimizer, decisions)

    title = "ReDo"  # how the console and the report pages name it
