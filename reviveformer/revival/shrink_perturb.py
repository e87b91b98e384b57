"""Shrink and perturb (Ash & Adams 2020, "On Warm-Starting Neural Network Training", NeurIPS): at each
revival, every weight moves toward zero and gets noise from the init distribution.

At revival k (0-based), every parameter w becomes

    w <- shrink * w + perturb * n

where n is that parameter's value in a freshly initialised copy of the model built under the seed
`seed * SEED_STRIDE + k` (`reviveformer.revival.fresh_start.fresh_parameters`: the model's own init, drawn on
the CPU, the same on every process). So n has the init's distribution per parameter: normal(0,
initializer_range) for GPT-2's matrices and embeddings, 1 for a LayerNorm weight, 0 for a bias. shrink=1,
perturb=0 leaves the model as it is; shrink=0, perturb=1 is a fresh start of the weights. This is the
authors' own procedure (JordanAsh/warm_start, `run.py`: a newly built model is the noise source, "using a
randomly-initialized model as a noise source respects how different kinds of parameters are often initialized
differently"; defaults shrink 0.4, perturb 0.1). The optimizer state is kept, so the method changes the weights
only (the authors build a new optimizer each round; `fresh_start` shows what dropping the state does): AdamW's
moments are those of the weights before the shrink.

Meant for task boundaries (`revival.every: task`); `revival.every_steps` also drives it.

Metrics returned by `revive`: `revival/dead_units` (and per layer: the report's dead units, before the edit),
`revival/weight_norm_before` and `revival/weight_norm_after` (the L2 norm over all parameters), and
`revival/count`.
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
from reviveformer.revival.fresh_start import WholeModelReviver, dead_details


@dataclass
class ShrinkPerturbOptions:
    """The config section `revival.shrink_perturb` (Ash & Adams 2020: lambda and the noise scale)."""

    shrink: float = 0.4
    """lambda: every weight is multiplied by this (in [0, 1]; the authors' code defaults to 0.4)."""
    perturb: float = field(
        default=0.1,
        # shrink 0 with perturb 1 is a fresh init; a larger sigma makes weights noisier than any init (1e30: inf)
        metadata=within(0, 1, why="above 1 the noise is larger than a fresh init's weights"),
    )
    """sigma: the scale of the added noise, a fresh init's value of the weight (in [0, 1]; the authors' code:
    0.1)."""

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.shrink) and 0 <= self.shrink <= 1):
            problems.append(f"revival.shrink_perturb.shrink={self.shrink} must be in [0, 1]")
        if not (math.isfinite(self.perturb) and self.perturb >= 0):
            problems.append(f"revival.shrink_perturb.perturb={self.perturb} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


class ShrinkPerturb(WholeModelReviver):
    """Shrink every weight and perturb it with init noise at each revival (Ash & Adams 2020)."""

    name = "shrink_perturb"
    arm = "shrink_perturb"
    Options = ShrinkPerturbOptions
    run_metrics = ("weight_norm_before", "weight_norm_after", "count")

    def __init__(self, shrink: float = 0.4, perturb: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed=seed)
        ShrinkPerturbOptions(shrink, perturb)  # the same checks as the config's
        self.shrink = shrink
        self.perturb = perturb

    @classmethod
    def from_config(cls, options: ShrinkPerturbOptions, *, seed: int = 0) -> ShrinkPerturb:
        """From `revival.shrink_perturb` and the run's seed (which seeds the noise)."""
        return cls(shrink=options.shrink, perturb=options.perturb, seed=seed)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """w <- shrink * w + perturb * n for every parameter; the optimizer state is kept."""
        details = dead_details(model, report)
        noise = self._fresh(model)
        before = after = 0.0
        for name, param in architectures.unwrap(model).named_parameters():
            if name not in noise:  # a parameter the HF model does not build (a custom activation's own)
                continue
            before += float(param.detach().float().pow(2).sum())
            param.mul_(self.shrink).add_(
                noise[name].to(device=param.device, dtype=param.dtype), alpha=self.perturb
            )
            after += float(param.detach().float().pow(2).sum())
        return self._done(
            details, {"weight_norm_before": math.sqrt(before), "weight_norm_after": math.sqrt(after)}
        )

    title = "shrink and perturb"  # how the console and the report pages name it
