"""A user's own revival method for the `revival.method=package.module:Class` tests (imported by name, as a
user's module would be, not collected by pytest).

BiasKick sets the `c_fc` bias of every dead MLP unit to `revival.bias_kick.value` (a ReLU unit whose input
sat below zero fires again) and resets that bias entry's optimizer state: the smallest method that edits the
model, keeps state and has options of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reviveformer.liveness import LivenessReport
from reviveformer.revival import Reviver, reset_adam_state
from reviveformer.revival.base import mlp_layers, site_layers


@dataclass
class BiasKickOptions:
    """The config section `revival.bias_kick`."""

    value: float = 0.5
    """The bias a dead unit gets."""

    def __post_init__(self) -> None:
        if not self.value > 0:
            raise ValueError(f"revival.bias_kick.value={self.value} must be > 0")


class BiasKick(Reviver):
    name = "bias_kick"
    arm = "kick"
    Options = BiasKickOptions
    layer_metrics = ("kicked_units",)
    run_metrics = ("kicked_total", "count")

    def __init__(self, value: float = 0.5) -> None:
        super().__init__()
        self.value = value
        self.revivals = 0
        self.kicked_total = 0

    @classmethod
    def from_config(cls, options: BiasKickOptions, *, seed: int = 0) -> BiasKick:
        return cls(value=options.value)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        mlps = mlp_layers(model)
        details = []
        for entry in site_layers(report, mlps, self.name):
            dead = sorted(entry.dead_units) if report.tokens > 0 else []
            bias = mlps[entry.layer].c_fc.bias
            mask = torch.zeros_like(bias, dtype=torch.bool)
            mask[dead] = True
            bias.masked_fill_(mask, self.value)
            reset_adam_state(optimizer, bias, mask)
            details.append({"layer": entry.layer, "kicked_units": len(dead)})
            self.kicked_total += len(dead)
        self.revivals += 1
        self._details = details
        return self._metrics(details, {"kicked_total": self.kicked_total, "count": self.revivals})

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "revivals": self.revivals, "kicked_total": self.kicked_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_method(state)
        self.revivals = int(state["revivals"])
        self.kicked_total = int(state["kicked_total"])


class Flaky(BiasKick):
    """BiasKick whose `revive` raises while `Flaky.failing` is set: a user's method with a bug, fixed later."""

    name = "flaky"
    arm = "flaky"
    failing = True

    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        if Flaky.failing:
            raise KeyError("no bias here")
        return super().revive(model, report, optimizer)


class NotAReviver:
    """A class that is not a Reviver subclass: naming it is a clear error."""
