"""L2 toward the initial weights (Kumar et al. 2023, "Maintaining Plasticity in Continual Learning via
Regenerative Regularization"): the loss gets the term strength * ||w - w0||^2 over every trainable parameter.

w0 is the model's weights at its first optimizer step (taken in the first `before_optimizer_step`, before any
update: the initial weights; or at `attach`, or at a `revive` before any step), kept on the device and saved
in the checkpoint. The term is added as its gradient,

    grad += 2 * strength * (w - w0)

in `before_optimizer_step`, which the trainer calls after backward, gradient clipping and the non-finite
check: so the term is not clipped (like AdamW's decoupled weight decay, it is applied as it is whatever the
loss's gradient norm) and is not part of the logged loss. Under DDP the gradients are already averaged over
processes there and every replica holds the same w and w0, so every process adds the same. A parameter
without a gradient on a step (unused) gets the term alone. The optimizer state is never reset.

It acts every optimizer step; `revive` edits nothing and returns its metrics: `revival/dead_units` (and per
layer, from the report), `revival/distance_to_init` (||w - w0|| over all parameters, the one host sync, at
revival time only) and `revival/count`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.liveness import LivenessReport
from reviveformer.ranges import within
from reviveformer.revival.base import Reviver
from reviveformer.revival.fresh_start import dead_details


@dataclass
class L2InitOptions:
    """The config section `revival.l2_init` (Kumar et al. 2023's lambda)."""

    strength: float = field(
        default=1e-3,
        # The term's gradient 2 * strength * (w - w0) outweighs the loss's once w is |grad L| / (2 * strength)
        # from w0: past 1e3 that is under 1e-7 at a language model's per-weight gradients (~1e-4), and AdamW,
        # which normalises the sum, holds every weight at w0. At 1e30 AdamW's second moment overflows besides.
        metadata=within(
            0, 1e3, low_open=True, why="above it the pull to the initial weights stops all learning"
        ),
    )
    """lambda of the loss term strength * ||w - w0||^2, in (0, 1e3] (Kumar et al. 2023 and others: 1e-6 to
    1e-1)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"revival.l2_init.strength={self.strength} must be a number > 0")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters of the plain model by name (a tied weight once)."""
    return {n: p for n, p in architectures.unwrap(model).named_parameters() if p.requires_grad}


class L2Init(Reviver):
    """Regenerative regularization toward the initial weights (Kumar et al. 2023)."""

    name = "l2_init"
    arm = "l2_init"
    Options = L2InitOptions
    acts = "step"
    layer_metrics = ("dead_units",)
    run_metrics = ("distance_to_init", "count")

    def __init__(self, strength: float = 1e-3) -> None:
        super().__init__()
        L2InitOptions(strength)
        self.strength = strength
        self.revivals = 0
        self._w0: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, options: L2InitOptions, *, seed: int = 0) -> L2Init:
        """From `revival.l2_init` (it draws nothing: the seed is unused)."""
        return cls(strength=options.strength)

    @torch.no_grad()
    def initial_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """w0 by parameter name, on each parameter's device: taken from `model` now if not yet held."""
        params = trainable(model)
        if self._w0 is None:
            self._w0 = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():  # a resumed w0 is on the CPU: moved once
            if self._w0[n].device != p.device:
                self._w0[n] = self._w0[n].to(p.device)
        return self._w0

    def attach(self, model: nn.Module, optimizer: Any) -> None:
        """Take w0 before training starts (a resumed w0 is kept)."""
        self.initial_weights(model)

    @torch.no_grad()
    def before_optimizer_step(self, model: nn.Module) -> None:
        """grad += 2 * strength * (w - w0), in place on the device."""
        w0 = self.initial_weights(model)
        for n, p in trainable(model).items():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            # d/dw strength * ||w - w0||^2 = 2 * strength * (w - w0)
            p.grad.add_(p.detach() - w0[n], alpha=2 * self.strength)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Edits nothing: the term acts every step. Returns the distance to w0 and the report's dead units."""
        details = dead_details(model, report)
        w0 = self.initial_weights(model)
        sq = sum(
            float((p.detach().float() - w0[n].float()).pow(2).sum()) for n, p in trainable(model).items()
        )
        self.revivals += 1
        self._details = details
        return self._metrics(details, {"distance_to_init": math.sqrt(sq), "count": self.revivals})

    def state_dict(self) -> dict[str, Any]:
        """w0 (on the CPU; empty before it is taken) and the revival count."""
        w0 = {} if self._w0 is None else {n: t.detach().cpu().clone() for n, t in self._w0.items()}
        return {"method": self.name, "revivals": self.revivals, "w0": w0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (w0 moves to the parameters' device at the next step)."""
        self._check_method(state)
        self.revivals = int(state["revivals"])
        self._w0 = {n: t.detach().clone() for n, t in state["w0"].items()} or None

    title = "L2 toward init"  # how the console and the report pages name it
