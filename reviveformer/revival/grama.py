"""GraMa / ReGraMa (Liu et al. 2025, "Measure gradients, not activations! Enhancing neuronal activity in deep
reinforcement learning", NeurIPS 2025, arXiv 2505.24061): re-initialise MLP units whose incoming weights get
little gradient.

Dormancy by activation value is ill-posed for GELU or SiLU (a unit is never exactly silent); GraMa asks
instead whether a unit still learns. At optimizer step s, for MLP unit j of layer i with incoming weights
`W_in[j]` (its architecture's `incoming_weights`: one column of GPT-2's first MLP matrix; a gated unit's gate
and up rows together, the mean taken over both):

    m_s[j] = mean_r |dL/dW_in[j, r]|            s_s[j] = m_s[j] / mean_k m_s[k]

The score of unit j is s_s[j] averaged over the optimizer steps since the last revival (the paper scores one
batch; averaging over a window measures the same thing with less noise). Normalising within each step makes
the score independent of gradient clipping and of the loss's overall scale, both of which multiply every
gradient of a step by one factor. A layer whose gradients are all zero on a step scores 0 there. A unit with
score <= tau is dormant and is reset like ReDo: fresh incoming weights (the model's init), zero bias, zero
outgoing weights, and its optimizer state reset (`reviveformer.revival.reinit`, shared with ReDo).

The statistic is accumulated on the device in `before_optimizer_step` (called by the trainer after backward,
clipping and the non-finite check, right before `optimizer.step()`): a few small in-place kernels per layer,
no host sync. Under DDP the gradients are already averaged over processes at that point, so every process
accumulates the same sums; the decision still takes process 0's sums (broadcast) so that every replica makes
the same edit by construction.

Metrics returned by `revive` (totals, and per layer as `revival/layer_<i>/<name>` for the first three):
`revival/dormant_units` (units reset now), `revival/dead_units` (dead units in the liveness report, for
comparing arms), `revival/revived_units` (dormant at the previous revival, not now),
`revival/reinitialised_total`, `revival/count`, and `revival/grama_steps` (optimizer steps scored).

The contract: docs/design.md, "Revival" (GraMa).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.architectures.base import unit_rows
from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import REVIVAL_SITE, mlp_layers, mlp_units
from reviveformer.revival.reinit import ReinitReviver, TauOptions

log = logging.getLogger("reviveformer")


@torch.no_grad()
def step_scores(grad: torch.Tensor, *, units_first: bool = False) -> torch.Tensor:
    """GraMa scores of one step from the gradient of a layer's one incoming weight matrix (one column per unit,
    or with `units_first` one row): per unit, the mean |gradient| of its incoming weights over the layer's mean
    of that (Liu et al. 2025). Zero gradient -> 0."""
    return _normalised(unit_rows(grad.detach().float().abs(), units_first).mean(dim=1))


@torch.no_grad()
def mlp_step_scores(mlp: nn.Module) -> torch.Tensor:
    """GraMa scores of one step of one MLP of any architecture, from the gradients of its units' incoming
    weights: per unit, the mean |gradient| over all its incoming entries (a gated unit: its gate and up rows
    together; a single incoming matrix: `step_scores` of its gradient), over the layer's mean. A frozen weight
    has no gradient and contributes zeros, as in training."""
    parts = []
    for weight in architectures.of(mlp).incoming_weights(mlp):
        grad = weight.param.grad if weight.param.grad is not None else torch.zeros_like(weight.param)
        parts.append(weight.unit_rows(grad.detach().float().abs()))
    return _normalised(torch.cat(parts, dim=1).mean(dim=1))


def _normalised(per_unit: torch.Tensor) -> torch.Tensor:
    """Per-unit magnitudes over their layer mean."""
    # clamp_min: an all-zero layer gives 0 / tiny = 0 instead of NaN, on the device (no host branch)
    return per_unit / per_unit.mean().clamp_min(torch.finfo(torch.float32).tiny)


def saved_model_scores(model: nn.Module, loader) -> tuple[dict[int, torch.Tensor], int]:
    """GraMa scores of a model as it is, for `audit --gradients`: per MLP layer, the sum over this process's
    batches of each batch's `step_scores` (the training loss of the batch, in eval mode: no dropout), and the
    number of batches. The caller reduces both over processes; their quotient is the mean score the revival
    would decide from over a window of these batches. `model` is the plain module (not DDP-wrapped: each
    process scores its own batches, nothing is synchronised until the caller's reduction)."""
    was_training = model.training
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    batches = 0
    try:
        for batch in loader:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
            for i, mlp in enumerate(mlp_layers(model)):
                score = mlp_step_scores(mlp)
                sums[i] = sums[i] + score if i in sums else score
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not sums:
        sums = {
            i: torch.zeros(mlp_units(mlp), device=_device(mlp)) for i, mlp in enumerate(mlp_layers(model))
        }
    return sums, batches


def _device(mlp: nn.Module) -> torch.device:
    return architectures.of(mlp).incoming_weights(mlp)[0].param.device


def _broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Process 0's tensor on every process (a no-op on one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(t, src=0)
    return t


@dataclass
class GraMaOptions(TauOptions):
    """The config section `revival.grama`: `tau` on the gradient score (Liu et al. 2025)."""

    section = "grama"


class GraMa(ReinitReviver):
    """Gradient-magnitude dormancy and reset (ReGraMa, Liu et al. 2025)."""

    name = "grama"
    arm = "grama"
    Options = GraMaOptions
    run_metrics = ("reinitialised_total", "count", "grama_steps")

    def __init__(self, tau: float = 0.1, seed: int = 0) -> None:
        super().__init__(tau=tau, seed=seed)
        self.steps = 0  # optimizer steps accumulated in the current window
        self._sums: dict[int, torch.Tensor] = {}  # per layer, sum over the window of the step scores
        self.last_scores: dict[int, list[float]] = {}  # the scores the last revival decided from

    @torch.no_grad()
    def before_optimizer_step(self, model: nn.Module) -> None:
        """Add this step's scores of every MLP layer to the window (in place, on the device)."""
        for i, mlp in enumerate(mlp_layers(model)):
            score = mlp_step_scores(mlp)
            total = self._sums.get(i)
            if total is None:
                total = self._sums[i] = torch.zeros_like(score)
            elif total.device != score.device:  # a resumed state, still on the CPU: moved once
                total = self._sums[i] = total.to(score.device)
            total.add_(score)
        self.steps += 1

    def on_skipped_steps(self, count: int) -> None:
        """A skipped step added zero scores (its gradients were zeroed): out of the mean's count too, so that
        the window is the one of the steps that trained."""
        self.steps -= count

    def window_scores(self, model: nn.Module) -> dict[int, torch.Tensor]:
        """Per layer, the mean step score over the window so far (process 0's, on every process)."""
        out = {}
        for i, mlp in enumerate(mlp_layers(model)):
            total = self._sums.get(i)
            if total is None:
                total = torch.zeros(mlp_units(mlp), dtype=torch.float32, device=_device(mlp))
            out[i] = _broadcast_from_main(total.clone()) / max(self.steps, 1)
        return out

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Reset every unit whose window score is <= tau, then start a new window. The liveness report only
        gives the dead units logged beside the decision (GraMa decides from the gradients)."""
        dead = {e.layer: len(set(e.dead_units)) for e in report.sites.get(REVIVAL_SITE) or []}
        steps = self.steps
        if steps == 0:
            log.warning("revival.method=grama: no optimizer step since the last revival; nothing to score")
        decisions = []
        for i, layer_scores in self.window_scores(model).items():  # every MLP layer, in order
            values = layer_scores.cpu().tolist()  # the one host sync, at revival time only
            dormant = [j for j, s in enumerate(values) if s <= self.tau] if steps else []
            decisions.append((i, dormant, dead.get(i, 0)))
            self.last_scores[i] = values
        for total in self._sums.values():
            total.zero_()
        self.steps = 0
        return self._reinitialise(model, optimizer, decisions, grama_steps=steps)

    def state_dict(self) -> dict[str, Any]:
        """Seed, counters, the window's sums (on the CPU) and the previous dormant set per layer."""
        return {
            **super().state_dict(),
            "steps": self.steps,
            "sums": {str(i): t.detach().cpu().clone() for i, t in self._sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (the sums move to the gradients' device at the next step)."""
        super().load_state_dict(state)
        self.steps = int(state["steps"])
        self._sums = {int(i): t.detach().clone().float() for i, t in state["sums"].items()}

    title = "GraMa"  # how the console and the report pages name it
