"""Continual Backprop (Dohare et al. 2024, "Loss of plasticity in deep continual learning", Nature; reference
code shibhansh/loss-of-plasticity, `lop/algos/gnt.py` and `cbp_linear.py`): every optimizer step, replace a
small fraction of the mature MLP units that contribute least.

Per MLP unit j of layer i, after every optimizer step t (`after_optimizer_step`):

    h[j]   = mean over the step's training positions of |activation at mlp_post|
             (all its micro-batches; summed over processes, so every replica holds the same)
    c[j]   = h[j] * sum_k |outgoing weight of j to k|     (after the step's update)
    u[j]  <- decay_rate * u[j] + (1 - decay_rate) * c[j]  (the contribution utility)
    age[j] += 1

A unit is mature when age > maturity_threshold. The number to replace accumulates fractionally, as the
reference's `accumulate=True`: acc += replacement_rate * (number of mature units); n = floor(acc); acc -= n.
The n mature units of lowest bias-corrected utility u / (1 - decay_rate ** age) (the reference ranks by it)
are replaced: fresh incoming weights normal(0, initializer_range) (the model's init; a gated unit's gate and
up rows both) drawn on the CPU from a generator seeded by (seed, step), a zero incoming bias, zero outgoing
weights (the unit starts with no effect on the output), the AdamW state of those entries zeroed, utility 0 and
age 0 (`reviveformer.revival.reinit.reinitialise_units`, shared with ReDo). Two differences from `gnt.py`:
it also moves the replaced unit's mean contribution into the next layer's bias (here, as in `cbp_linear.py`,
not), and its Adam keeps a step count per entry, which it resets too; torch's AdamW has one `step` per
parameter, which is kept (the replaced entries restart from zero moments under the parameter's bias
correction, as ReDo's do).

The activations are read by forward hooks at `mlp_post` (registered by `attach`, which the builder calls before
the first forward; a reviver used without it attaches at its first step and scores that step without
activations: utility unchanged, ages counted). Only training-mode forwards count (not evaluation or liveness
passes). Utility, ages and the running sums live on the device; n is known on the host without a sync (how
many units are mature depends only on the step count and the past n, tracked by `_young`/`_mature`), so a step
with nothing to replace is a few element-wise kernels with no host sync, and the choice of units is a device
topk; a step that replaces units copies their fresh incoming weights from the host (drawn on the CPU so that
every device draws the same), a small blocking copy on those steps only. A step the
trainer skips (non-finite) is not seen: its activations count toward the next step's mean.

It acts every step; `revive` (epoch ends, task boundaries) edits nothing and returns its metrics:
`revival/replaced_units` (units replaced since the last revival; per layer as
`revival/layer_<i>/replaced_units`), `revival/dead_units` (the report's, per layer too),
`revival/replaced_total` (over the run) and `revival/count`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import REVIVAL_SITE, Reviver, mlp_layers, mlp_units, model_config
from reviveformer.revival.fresh_start import dead_details
from reviveformer.revival.reinit import SEED_STRIDE, reinitialise_units


@dataclass
class ContinualBackpropOptions:
    """The config section `revival.continual_backprop`. Defaults: the reference code's (`cbp_linear.py`:
    replacement_rate 1e-4, maturity_threshold 100; `gnt.py`: decay_rate 0.99)."""

    replacement_rate: float = 1e-4
    """Fraction of the mature units replaced per optimizer step (accumulated while below one unit), in [0, 1]
    (Dohare et al. 2024: 1e-6 to 1e-3)."""
    decay_rate: float = 0.99
    """Decay of the running contribution utility, in [0, 1)."""
    maturity_threshold: int = 100
    """A unit may be replaced once its age (optimizer steps since its last replacement) exceeds this (>= 0)."""

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.replacement_rate) and 0 <= self.replacement_rate <= 1):
            problems.append(
                f"revival.continual_backprop.replacement_rate={self.replacement_rate} must be in [0, 1]"
            )
        if not (math.isfinite(self.decay_rate) and 0 <= self.decay_rate < 1):
            problems.append(f"revival.continual_backprop.decay_rate={self.decay_rate} must be in [0, 1)")
        if isinstance(self.maturity_threshold, bool) or not isinstance(self.maturity_threshold, int):
            problems.append(
                f"revival.continual_backprop.maturity_threshold={self.maturity_threshold!r} must be an integer >= 0"
            )
        elif self.maturity_threshold < 0:
            problems.append(
                f"revival.continual_backprop.maturity_threshold={self.maturity_threshold} must be >= 0"
            )
        if problems:
            raise ValueError("; ".join(problems))


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over processes, in place (a no-op on one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


class ContinualBackprop(Reviver):
    """Continual Backprop's generate-and-test of MLP units, every optimizer step (Dohare et al. 2024)."""

    name = "continual_backprop"
    arm = "continual_backprop"
    Options = ContinualBackpropOptions
    acts = "step"
    layer_metrics = ("replaced_units", "dead_units")
    run_metrics = ("replaced_total", "count")

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        decay_rate: float = 0.99,
        maturity_threshold: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        ContinualBackpropOptions(replacement_rate, decay_rate, maturity_threshold)
        self.replacement_rate = replacement_rate
        self.decay_rate = decay_rate
        self.maturity_threshold = maturity_threshold
        self.seed = seed
        self.steps = 0  # optimizer steps seen
        self.revivals = 0
        self.replaced_total = 0
        self.utility: dict[int, torch.Tensor] = {}  # per layer, u (float32, units)
        self.ages: dict[int, torch.Tensor] = {}  # per layer, age (int64, units)
        self.accumulated: dict[int, float] = {}  # per layer, the fractional count carried over
        self.replaced_since: dict[int, int] = {}  # per layer, units replaced since the last revive
        # The host's view of the ages, by count only: per layer, [birth step, units] of the units not yet mature
        # (oldest first), and how many are mature. It gives n without reading the device.
        self._young: dict[int, list[list[int]]] = {}
        self._mature: dict[int, int] = {}
        self._sums: torch.Tensor | None = (
            None  # per layer's slice: sum of |h| per unit, then the position count
        )
        self._slices: list[slice] = []
        self._hooks: list[Any] = []
        self._optimizer: Any = None
        self._attached = False

    @classmethod
    def from_config(cls, options: ContinualBackpropOptions, *, seed: int = 0) -> ContinualBackprop:
        """From `revival.continual_backprop` and the run's seed (which seeds the fresh weights)."""
        return cls(options.replacement_rate, options.decay_rate, options.maturity_threshold, seed=seed)

    # ------------------------------------------------------------------ activations
    def attach(self, model: nn.Module, optimizer: Any) -> None:
        """Register the forward hooks at `mlp_post` and keep the optimizer (whose state replacement resets)."""
        self.close()
        self._optimizer = optimizer
        arch = architectures.of(model)
        path, reads = arch.site_location(REVIVAL_SITE)
        mlps = mlp_layers(model)
        device = arch.incoming_weights(mlps[0])[0].param.device
        sizes = [mlp_units(m) for m in mlps]
        starts = [sum(s + 1 for s in sizes[:i]) for i in range(len(sizes))]
        self._slices = [slice(a, a + s + 1) for a, s in zip(starts, sizes, strict=True)]
        if self._sums is None or self._sums.numel() != sum(
            s + 1 for s in sizes
        ):  # else a resumed step's sums
            self._sums = torch.zeros(sum(s + 1 for s in sizes), dtype=torch.float32, device=device)
        for i, block in enumerate(arch.blocks(model)):
            module = arch.block_module(block, path, i)
            if reads == "output":
                self._hooks.append(module.register_forward_hook(self._output_hook(i)))
            else:
                self._hooks.append(module.register_forward_pre_hook(self._input_hook(i)))
        self._attached = True

    def _output_hook(self, i: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training:
                self._add(i, output)

        return hook

    def _input_hook(self, i: int):
        def hook(module: nn.Module, args: Any) -> None:
            if module.training:
                self._add(i, args[0])

        return hook

    @torch.no_grad()
    def _add(self, i: int, h: torch.Tensor) -> None:
        """Add one forward's sum of |h| per unit and its position count to layer i's slice (on the device)."""
        assert self._sums is not None
        part = self._sums[self._slices[i]]
        if part.device != h.device:  # the model moved after attach (Accelerate's prepare): follow it once
            self._sums = self._sums.to(h.device)
            part = self._sums[self._slices[i]]
        part[:-1].add_(h.detach().float().abs().reshape(-1, h.shape[-1]).sum(0))
        part[-1].add_(h[..., 0].numel())

    def close(self) -> None:
        """Remove the forward hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._attached = False

    # ------------------------------------------------------------------ every step
    def _layer_state(self, i: int, units: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's utility and ages on `device` (created at zero, or a resumed state moved once)."""
        if i not in self.utility:
            self.utility[i] = torch.zeros(units, dtype=torch.float32, device=device)
            self.ages[i] = torch.zeros(units, dtype=torch.long, device=device)
            self.accumulated.setdefault(i, 0.0)
            # created during step `steps`, whose age count follows: the units were born the step before
            self._young[i], self._mature[i] = [[self.steps - 1, units]], 0
        elif self.utility[i].device != device:
            self.utility[i] = self.utility[i].to(device)
            self.ages[i] = self.ages[i].to(device)
        return self.utility[i], self.ages[i]

    def _how_many(self, i: int) -> int:
        """Units of layer i to replace at this step: the mature count from the host's ages, accumulated."""
        young = self._young[i]
        while young and self.steps - young[0][0] > self.maturity_threshold:
            self._mature[i] += young.pop(0)[1]
        self.accumulated[i] += self.replacement_rate * self._mature[i]
        n = int(self.accumulated[i])
        self.accumulated[i] -= n
        return n

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """Update utility and ages from the step's activations and the updated outgoing weights; replace the n
        lowest-utility mature units of each layer."""
        if not self._attached:
            self.attach(model, self._optimizer)
        assert self._sums is not None
        sums = _all_reduce_sum(self._sums)
        self.steps += 1
        std = float(model_config(model).initializer_range)
        gen = torch.Generator(device="cpu").manual_seed(self.seed * SEED_STRIDE + self.steps)
        for i, mlp in enumerate(mlp_layers(model)):
            arch = architectures.of(mlp)
            outgoing = arch.outgoing_weights(mlp)
            device = outgoing[0].param.device
            part = sums[self._slices[i]].to(device)
            u, age = self._layer_state(i, part.numel() - 1, device)
            count = part[-1]
            h = part[:-1] / count.clamp_min(1)
            w_out = sum(w.view.detach().float().abs().sum(1) for w in outgoing)
            # no position seen (a step before the hooks existed): the utility keeps its value
            new = self.decay_rate * u + (1 - self.decay_rate) * h * w_out
            u.copy_(torch.where(count > 0, new, u))
            age.add_(1)
            n = self._how_many(i)
            if n:
                corrected = u / (1 - torch.pow(self.decay_rate, age.float()))
                ranked = torch.where(age > self.maturity_threshold, corrected, torch.inf)
                idx = torch.topk(ranked, n, largest=False).indices.sort().values
                reinitialise_units(mlp, idx, gen, std, self._optimizer)
                u[idx] = 0
                age[idx] = 0
                self._mature[i] -= n
                self._young[i].append([self.steps, n])
                self.replaced_since[i] = self.replaced_since.get(i, 0) + n
                self.replaced_total += n
        sums.zero_()

    # ------------------------------------------------------------------ revival points and state
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Edits nothing (replacement happens every step): the units replaced since the last revival."""
        details = dead_details(model, report)
        for d in details:
            d["replaced_units"] = self.replaced_since.get(d["layer"], 0)
        self.replaced_since = {}
        self.revivals += 1
        self._details = details
        return self._metrics(details, {"replaced_total": self.replaced_total, "count": self.revivals})

    def state_dict(self) -> dict[str, Any]:
        """Counters, per layer utility, ages and fractional count (on the CPU), and the step's running sums."""
        return {
            "method": self.name,
            "seed": self.seed,
            "steps": self.steps,
            "revivals": self.revivals,
            "replaced_total": self.replaced_total,
            "utility": {str(i): t.detach().cpu().clone() for i, t in self.utility.items()},
            "ages": {str(i): t.detach().cpu().clone() for i, t in self.ages.items()},
            "accumulated": {str(i): float(a) for i, a in self.accumulated.items()},
            "replaced_since": {str(i): int(n) for i, n in self.replaced_since.items()},
            "sums": self._sums.detach().cpu().clone() if self._sums is not None else torch.zeros(0),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the host's mature counts are rebuilt from the ages (with this run's
        maturity_threshold)."""
        self._check_method(state)
        self.seed = int(state["seed"])
        self.steps = int(state["steps"])
        self.revivals = int(state["revivals"])
        self.replaced_total = int(state["replaced_total"])
        self.utility = {int(i): t.detach().clone().float() for i, t in state["utility"].items()}
        self.ages = {int(i): t.detach().clone().long() for i, t in state["ages"].items()}
        self.accumulated = {int(i): float(a) for i, a in state["accumulated"].items()}
        self.replaced_since = {int(i): int(n) for i, n in state["replaced_since"].items()}
        self._young, self._mature = {}, {}
        for i, ages in self.ages.items():
            values, counts = torch.unique(ages, return_counts=True)  # sorted ascending: youngest first
            young = [[self.steps - int(a), int(c)] for a, c in zip(values, counts, strict=True)]
            self._young[i] = [b for b in reversed(young) if self.steps - b[0] <= self.maturity_threshold]
            self._mature[i] = sum(
                int(c) for a, c in zip(values, counts, strict=True) if a > self.maturity_threshold
            )
        sums = state["sums"]
        if sums.numel():
            if self._sums is not None and self._sums.numel() == sums.numel():
                self._sums.copy_(sums.to(self._sums.device))
            else:
                self._sums = sums.detach().clone().float()

    title = "Continual Backprop"  # how the console and the report pages name it
