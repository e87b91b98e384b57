"""Fresh start: at each revival, re-initialise the whole model and its optimizer state, the ceiling of
plasticity in continual training (docs/design.md, Revival; issue 20, "the ceiling").

At revival k (0-based: `revival/count` - 1) every parameter becomes the value a freshly built model of the
same class and config holds when built under the seed `seed * SEED_STRIDE + k` (`fresh_parameters`): the
model's own init distribution (GPT-2: normal(0, initializer_range), its scaled residual projections, LayerNorm at
1 and 0; the Llama family likewise), drawn on the CPU from a seeded generator, so every process draws the same
whatever its device. All optimizer state is dropped, as for a new optimizer: AdamW's moments and its `step`
start again at the next optimizer step (the learning-rate schedule is the trainer's, and is not touched). A
parameter the Hugging Face model does not build (a custom activation's own) keeps its value.

Meant for task boundaries (`revival.every: task`); `revival.every_steps` also drives it. The report is not
read except for the dead units logged beside the event.

Metrics returned by `revive`: `revival/dead_units` (and per layer `revival/layer_<i>/dead_units`: the dead
units of the report, before the reset, for comparing arms), `revival/reset_parameters` (entries
re-initialised), `revival/count`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.liveness import LivenessReport
from reviveformer.revival.base import REVIVAL_SITE, Reviver, mlp_layers
from reviveformer.revival.optim import torch_optimizer
from reviveformer.revival.reinit import SEED_STRIDE


@torch.no_grad()
def fresh_parameters(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter (by name) of a new model of `model`'s class and config built on the CPU under `seed`:
    the model's own init, reproducible on any device and process. The global RNG is left as it was."""
    plain = architectures.unwrap(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(plain)(plain.config)
    return dict(fresh.named_parameters())


def dead_details(model: nn.Module, report: LivenessReport) -> list[dict[str, Any]]:
    """Per MLP layer, the dead units at `mlp_post` of `report` (0 where it has none), for comparing arms."""
    dead = {e.layer: len(set(e.dead_units)) for e in report.sites.get(REVIVAL_SITE) or []}
    return [{"layer": i, "dead_units": dead.get(i, 0)} for i in range(len(mlp_layers(model)))]


class WholeModelReviver(Reviver):
    """A method that edits every parameter at each revival from a fresh init drawn under (seed, revival index):
    fresh start, shrink and perturb. It keeps the seed and the revival count, and logs the report's dead units
    per layer beside the event."""

    acts = "always"
    layer_metrics = ("dead_units",)

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.revivals = 0

    def _fresh(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """This revival's fresh init: `fresh_parameters` under `seed * SEED_STRIDE + revivals`."""
        return fresh_parameters(model, self.seed * SEED_STRIDE + self.revivals)

    def _done(self, details: list[dict[str, Any]], run: dict[str, float]) -> dict[str, float]:
        """Count the revival; `revive`'s metrics (`run` without `count`)."""
        self.revivals += 1
        self._details = details
        return self._metrics(details, {**run, "count": self.revivals})

    def state_dict(self) -> dict[str, Any]:
        """The seed and the revival count (which seeds the next draw)."""
        return {"method": self.name, "seed": self.seed, "revivals": self.revivals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        self._check_method(state)
        self.seed = int(state["seed"])
        self.revivals = int(state["revivals"])


class FreshStart(WholeModelReviver):
    """Re-initialise every weight and drop all optimizer state at each revival."""

    name = "fresh_start"
    arm = "fresh_start"
    Options = None
    run_metrics = ("reset_parameters", "count")

    @classmethod
    def from_config(cls, options: None, *, seed: int = 0) -> FreshStart:
        """No options; the run's seed seeds the fresh weights."""
        return cls(seed=seed)

    @torch.no_grad()
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Overwrite every parameter with `fresh_parameters(model, seed * SEED_STRIDE + k)` and clear the
        optimizer's state."""
        details = dead_details(model, report)
        fresh = self._fresh(model)
        reset = 0
        for name, param in architectures.unwrap(model).named_parameters():
            if name in fresh:
                param.copy_(fresh[name])
                reset += param.numel()
        opt = torch_optimizer(optimizer)
        if opt is not None:
            # torch's AdamW builds a parameter's state afresh (step 0, zero moments) when it has none
            opt.state.clear()
        return self._done(details, {"reset_parameters": reset})

    title = "fresh start"  # how the console and the report pages name it
