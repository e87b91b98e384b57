"""Effective capacity (design.md): alive MLP units, and the trainable parameters not lost to dead or pruned
units."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from reviveformer import architectures


def capacity(
    model: nn.Module, dead_units: dict[int, list[int]], pruned_masks: dict[int, Tensor] | None = None
) -> dict[str, int | float]:
    """Effective capacity (design.md): alive MLP units, and trainable parameters minus those that belong only
    to dead MLP units (their incoming weights and bias and their outgoing weights, as the architecture lays them
    out) minus pruned weights of the other units. `pruned_masks[i]` is a bool tensor shaped like layer i's
    (first) incoming weight, True = pruned.
    `model` may be wrapped (DDP, torch.compile)."""
    arch = architectures.of(model)
    mlps = arch.mlps(model)
    pruned = {}
    for i, mask in (pruned_masks or {}).items():
        weight = arch.incoming_weights(mlps[i])[0]  # what stripping masks
        if tuple(mask.shape) != tuple(weight.param.shape):
            raise ValueError(
                f"pruned mask of layer {i} has shape {tuple(mask.shape)}, its incoming weight "
                f"{tuple(weight.param.shape)}"
            )
        pruned[i] = weight.unit_rows(mask).sum(dim=1).cpu().numpy()
    return _capacity(model, dead_units, pruned)


def _capacity(
    model: nn.Module, dead_units: dict[int, Any], pruned_per_unit: dict[int, np.ndarray]
) -> dict[str, int | float]:
    """`capacity` from the number of pruned incoming weights of each unit (layer -> (units,) ints);
    `dead_units[i]`: unit indices of layer i, a list or an integer array."""
    model = architectures.unwrap(model)
    arch = architectures.of(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    all_units = alive = 0
    effective = trainable
    for i, mlp in enumerate(arch.mlps(model)):
        units = arch.mlp_units(mlp)
        listed = np.asarray(dead_units.get(i, []), dtype=np.int64)
        if listed.size and not (0 <= listed.min() and listed.max() < units):
            raise ValueError(
                f"dead unit indices {listed.min()}..{listed.max()} out of range for {units} units in layer {i}"
            )
        dead = np.zeros(units, dtype=bool)
        dead[listed] = True  # a unit listed twice counts once
        n_dead = int(dead.sum())
        all_units += units
        alive += units - n_dead
        effective -= arch.per_unit_parameters(mlp) * n_dead
        pruned = pruned_per_unit.get(i)
        if pruned is not None and arch.incoming_weights(mlp)[0].param.requires_grad:
            effective -= int(pruned[~dead].sum())  # pruned weights of dead units are already subtracted
    return {
        "alive_units": alive,
        "alive_fraction": alive / all_units if all_units else 0.0,
        "effective_params": effective,
        "effective_param_fraction": effective / trainable if trainable else 0.0,
    }
