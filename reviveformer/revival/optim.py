"""Optimizer-state surgery shared by the revival methods."""

from __future__ import annotations

from typing import Any

import torch


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The plain torch optimizer behind an `accelerate` `AcceleratedOptimizer` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


@torch.no_grad()
def reset_adam_state(optimizer: Any, param: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the per-entry optimizer state of `param` where `mask` is True.

    For AdamW that is `exp_avg` and `exp_avg_sq` (and `max_exp_avg_sq` with amsgrad): every state tensor shaped
    like the parameter is per-entry state, so momentum cannot push a revived or stripped weight straight back
    (Whitaker & Whitley 2023; Sokar et al. 2023 reset the moments the same way). Scalar state such as `step`
    is left alone. Nothing to do when `optimizer` is None or has no state for `param` yet (before its first
    step).
    """
    opt = torch_optimizer(optimizer)
    if opt is None:
        return
    state = opt.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(mask.to(value.device), 0)
