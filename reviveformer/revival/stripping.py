"""Synaptic stripping (Whitaker & Whitley 2023, "Synaptic Stripping: How Pruning Can Bring Dead Neurons Back
To Life"): zero the most negative incoming weights of dead MLP units so that they can fire again.

Metrics returned by `revive` (totals, and per layer as `revival/layer_<i>/<name>` for the first four):

- `revival/dead_units`: dead units at `mlp_post` in this report.
- `revival/stripped_now`: parameter entries zeroed by this revival (incoming weights, plus biases if strip_bias).
- `revival/pruned_total`: entries held at zero by the persistent mask (0 when not persistent).
- `revival/revived_units`: units dead at the previous revival and alive now (0 at the first revival).
- `revival/stripped_total`: entries zeroed over all revivals so far.
- `revival/count`: revivals so far.

The contract: docs/design.md, "Revival" (synaptic stripping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.architectures.base import Architecture, UnitWeight, unit_rows
from reviveformer.errors import ConfigError
from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import Reviver, mlp_layers, revived_count, site_layers, unit_index
from reviveformer.revival.optim import reset_adam_state

if TYPE_CHECKING:
    from reviveformer.revival.events import RevivalEvent

# ceil(fraction * n) is taken on fraction * n * (1 - _CEIL_SLACK): a product such as 0.1 * 30 is
# 3.0000000000000004 in floating point, and its ceil must be the 3 that the user meant, not 4.
_CEIL_SLACK = 1e-12


def strip_counts(n_nonzero: torch.Tensor, fraction: float) -> torch.Tensor:
    """k = ceil(fraction * n) per unit (Whitaker & Whitley 2023), robust to float error in the product."""
    return torch.ceil(n_nonzero.double() * fraction * (1.0 - _CEIL_SLACK)).long()


def strip_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dead_units: list[int] | torch.Tensor,
    fraction: float,
    strip_bias: bool = False,
    *,
    units_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which entries of one layer synaptic stripping zeroes (pure: the tensors are not modified).

    `weight` is the layer's incoming weight matrix, with one column per unit (GPT-2's layout) or,
    with `units_first`, one row per unit (the architecture's `UnitWeight` says which). For each dead
    unit j: n = nonzero entries of its incoming weights, k = ceil(fraction * n); the k
    most negative entries are zeroed, or all negative ones if fewer than k are negative (Whitaker & Whitley
    2023). With `strip_bias`, a negative `bias[j]` is zeroed too. Ties are broken by the lower row index
    (stable sort), so the choice is deterministic. Returns bool masks shaped like `weight` and `bias`.
    """
    w_mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    b_mask = None if bias is None else torch.zeros(bias.shape, dtype=torch.bool, device=bias.device)
    dead = torch.as_tensor(dead_units, dtype=torch.long).to(weight.device).unique(sorted=True)
    if dead.numel() == 0:
        return w_mask, b_mask
    units = unit_rows(weight.detach(), units_first)  # (units, in): row j is unit j's incoming weights
    if dead[0] < 0 or dead[-1] >= units.shape[0]:
        raise ValueError(f"dead unit indices must be in [0, {units.shape[0]}), got {dead.tolist()}")
    rows = units.index_select(0, dead)  # (n_dead, in): one row per dead unit
    k = strip_counts((rows != 0).sum(1), fraction)
    k = torch.minimum(k, (rows < 0).sum(1))  # only negative entries are candidates
    # Rank of each entry within its row, most negative first; rank < k <= #negatives selects only
    # negative entries. argsort of the permutation inverts it without a (non-deterministic on GPU) scatter.
    order = torch.sort(rows, dim=1, stable=True).indices
    rank = torch.argsort(order, dim=1)
    unit_rows(w_mask, units_first)[dead] = rank < k.unsqueeze(1)
    if strip_bias and bias is not None:
        assert b_mask is not None
        b_mask[dead] = bias.detach()[dead] < 0
    return w_mask, b_mask


@dataclass
class StrippingOptions:
    """The config section `revival.synaptic_stripping`."""

    fraction: float = 0.05
    """Share of a dead unit's nonzero incoming weights to zero (most negative first), in (0, 1]."""
    persistent: bool = True
    """Stripped weights stay zero for the rest of training (mask after each optimizer step)."""
    strip_bias: bool = False
    """Also zero a dead unit's negative bias."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"revival.synaptic_stripping.fraction={self.fraction} must be in (0, 1]")


def check_strippable(model: nn.Module) -> None:
    """Raise ConfigError when the model's units have no synaptic stripping (a gated MLP: see
    `reviveformer.architectures.llama.STRIP_REFUSAL`), before anything is edited."""
    arch = architectures.of(model)
    if arch.STRIP_REFUSAL:
        raise ConfigError(
            f"synaptic stripping does not apply to this model's {arch.NAME} units: {arch.STRIP_REFUSAL}"
        )


def _incoming(arch: Architecture, mlp: nn.Module) -> tuple[UnitWeight, nn.Parameter | None]:
    """The incoming weight and bias of a layer's units: one each, for the units stripping applies to
    (`check_strippable`). The parameters themselves: the masks and the optimizer state are keyed by them."""
    (weight,) = arch.incoming_weights(mlp)
    biases = arch.incoming_biases(mlp)
    return weight, (biases[0] if biases else None)


def _hold_at_zero(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero `param` where `mask` is True; the mask comes back on the parameter's device (moved once, after
    `load_state_dict`, which loads masks on the CPU)."""
    if mask.device != param.device:
        mask = mask.to(param.device)
    param.masked_fill_(mask, 0)
    return mask


class SynapticStripping(Reviver):
    """Synaptic stripping of dead MLP units (Whitaker & Whitley 2023), optionally as persistent pruning."""

    name = "synaptic_stripping"
    arm = "stripping"
    Options = StrippingOptions
    layer_metrics = ("dead_units", "stripped_now", "pruned_total", "revived_units")
    run_metrics = ("stripped_total", "count")

    def __init__(self, fraction: float = 0.05, persistent: bool = True, strip_bias: bool = False) -> None:
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        self.fraction = fraction
        self.persistent = persistent
        self.strip_bias = strip_bias
        self.revivals = 0
        self.stripped_total = 0
        # layer -> bool, shaped like its incoming weight (and bias), True = pruned for good
        self._masks: dict[int, torch.Tensor] = {}
        self._bias_masks: dict[int, torch.Tensor] = {}
        self._prev_dead: dict[int, list[int]] = {}

    @classmethod
    def from_config(cls, options: StrippingOptions, *, seed: int = 0) -> SynapticStripping:
        """From `revival.synaptic_stripping`; stripping draws no random numbers."""
        return cls(fraction=options.fraction, persistent=options.persistent, strip_bias=options.strip_bias)

    def attach(self, model: nn.Module, optimizer: Any) -> None:
        """Refused before training starts on a model whose units have no stripping (not at the first revival)."""
        check_strippable(model)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Strip every dead unit at `mlp_post`, reset its optimizer state, extend the persistent mask.
        A report that saw no tokens measured nothing: no unit is taken for dead."""
        check_strippable(model)
        arch = architectures.of(model)
        mlps = mlp_layers(model)
        details = []
        for entry in site_layers(report, mlps, self.name):
            i = entry.layer
            weight, bias = _incoming(arch, mlps[i])
            found = entry.dead_units if report.tokens > 0 else []
            dead = unit_index(found, arch.mlp_units(mlps[i]), weight.param.device)
            stripped = self._strip(i, weight, bias, dead, optimizer)
            dead_list = dead.tolist()
            pruned = int(self._masks[i].sum()) if i in self._masks else 0
            if i in self._bias_masks:
                pruned += int(self._bias_masks[i].sum())
            details.append(
                {
                    "layer": i,
                    "dead_units": len(dead_list),
                    "stripped_now": stripped,
                    "pruned_total": pruned,
                    "revived_units": revived_count(self._prev_dead.get(i), dead_list),
                }
            )
            self._prev_dead[i] = dead_list
            self.stripped_total += stripped
        self.revivals += 1
        self._details = details
        return self._metrics(details, {"stripped_total": self.stripped_total, "count": self.revivals})

    def _strip(
        self,
        layer: int,
        weight: UnitWeight,
        bias: nn.Parameter | None,
        dead: torch.Tensor,
        optimizer: Any,
    ) -> int:
        """Strip the `dead` units of one layer, reset the optimizer state of what was zeroed, and extend the
        layer's persistent masks; returns the number of entries zeroed."""
        w_mask, b_mask = strip_layer(
            weight.param, bias, dead, self.fraction, self.strip_bias, units_first=weight.units_first
        )
        weight.param.masked_fill_(w_mask, 0)
        # Momentum would otherwise push the zeroed weights straight back (Whitaker & Whitley 2023).
        reset_adam_state(optimizer, weight.param, w_mask)
        stripped = int(w_mask.sum())
        if b_mask is not None and bias is not None:
            bias.masked_fill_(b_mask, 0)
            reset_adam_state(optimizer, bias, b_mask)
            stripped += int(b_mask.sum())
        if self.persistent:
            prev_w = self._masks.get(layer)
            self._masks[layer] = w_mask if prev_w is None else w_mask | prev_w.to(w_mask.device)
            if b_mask is not None:
                prev = self._bias_masks.get(layer)
                self._bias_masks[layer] = b_mask if prev is None else b_mask | prev.to(b_mask.device)
        return stripped

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hold persistently stripped entries at zero (in-place masked_fill_, no host sync)."""
        if not self._masks and not self._bias_masks:
            return
        arch = architectures.of(model)
        mlps = mlp_layers(model)
        for i, mask in self._masks.items():
            self._masks[i] = _hold_at_zero(_incoming(arch, mlps[i])[0].param, mask)
        for i, mask in self._bias_masks.items():
            bias = _incoming(arch, mlps[i])[1]
            assert bias is not None  # a bias mask is made only for a bias
            self._bias_masks[i] = _hold_at_zero(bias, mask)

    def pruned_masks(self) -> dict[int, torch.Tensor] | None:
        """The persistent masks of the incoming weights per layer, shaped like the weight (None when not
        persistent)."""
        return dict(self._masks) if self.persistent else None

    def state_dict(self) -> dict[str, Any]:
        """Masks (CPU bool tensors), the previous dead set per layer, and the counters."""
        return {
            "method": self.name,
            "revivals": self.revivals,
            "stripped_total": self.stripped_total,
            "masks": {str(i): m.cpu() for i, m in self._masks.items()},
            "bias_masks": {str(i): m.cpu() for i, m in self._bias_masks.items()},
            "prev_dead": {str(i): list(d) for i, d in self._prev_dead.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; masks move to the weights' device at the next `after_optimizer_step`."""
        self._check_method(state)
        self.revivals = int(state["revivals"])
        self.stripped_total = int(state["stripped_total"])
        self._masks = {int(i): m.to(torch.bool).clone() for i, m in state["masks"].items()}
        self._bias_masks = {int(i): m.to(torch.bool).clone() for i, m in state["bias_masks"].items()}
        self._prev_dead = {int(i): [int(j) for j in d] for i, d in state["prev_dead"].items()}

    # ------------------------------------------------------------------ how its revivals read (console, pages)

    title = "synaptic stripping"

    @classmethod
    def describe(cls, event: RevivalEvent, name: str, when: str = "") -> str:
        """The units found dead, the weights stripped now and held at zero, and the units revived."""
        return (
            f"{event.heading(name, when)}: {event.dead_units:,} dead units found, {event.stripped_now:,} weights "
            f"stripped ({event.pruned_total:,} held at zero in all); {event.since()}"
        )

    @classmethod
    def describe_totals(cls, events: Sequence[RevivalEvent], name: str) -> str:
        last = events[-1]
        return (
            f"{cls._totals_head(events, name)}, {sum(e.dead_units for e in events):,} dead units found in all, "
            f"{last.stripped_total:,} weights stripped ({last.pruned_total:,} held at zero now), "
            f"{sum(e.revived_units for e in events):,} units revived"
        )
