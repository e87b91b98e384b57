"""The revival interface: a `Reviver` edits the model (and its optimizer state) from a liveness report.

Lifecycle, driven by the trainer:

1. `revive(model, report, optimizer)` at each revival point (epoch end, or every `revival.every_steps`
   optimizer steps), after the validation liveness pass, with the typed `LivenessReport`. Returns the
   `revival/...` metrics to log: exactly `metric_keys(layers)`.
2. `before_optimizer_step(model)` once per optimizer step, after backward and gradient clipping, right before
   `optimizer.step()`: the gradients of the step are there (reduced over processes by DDP), unscaled (fp16's
   scaler unscales them in `clip_grad_norm_`) and finite: a step whose update is skipped for a non-finite loss
   or gradient shows all-zero gradients (the verdict stays on the device, no host sync), and
   `on_skipped_steps(count)` tells the method at the trainer's next read, before any revival or checkpoint,
   so that it can take those steps out of its own counts. For methods that measure gradients (GraMa).
3. `after_optimizer_step(model)` after every optimizer step (right after `optimizer.step()`), to keep
   persistently pruned weights at zero.
4. `state_dict()` / `load_state_dict()` with the checkpoint (masks, previous dead set, counters).
5. `attach(model, optimizer)` once before training's first forward (the builder; the transformers callback at
   train begin), for methods that act every step (Continual Backprop reads activations through forward hooks
   and resets optimizer state between revivals); `close()` removes what it registered.

A method is one class that carries everything the rest of the package asks of it: `name` (the
`revival.method` value), `arm` (the W&B job_type and comparison label of its runs), `Options` (the dataclass of
its config section `revival.<name>`, or None) and its metric names. A built-in is registered with one line in
`reviveformer.revival.REVIVERS`; a user's own is named `revival.method=package.module:Class`. docs/design.md
("Revival") is the contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from reviveformer import architectures
from reviveformer.errors import ConfigError
from reviveformer.liveness import LayerLiveness, LivenessReport
from reviveformer.metric_keys import revival_key

if TYPE_CHECKING:
    from reviveformer.revival.events import RevivalEvent

# The site whose units revival acts on: the output of the MLP activation (design.md, Revival).
REVIVAL_SITE = "mlp_post"
# Strategies that shard parameters across processes: editing a weight there would edit one shard only.
SHARDED_STRATEGIES = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def check_supported(distributed_type: Any) -> None:
    """Raise ConfigError when revival cannot run under this Accelerate distributed type.

    Accepts `accelerator.distributed_type` or its `str()` ("DistributedType.FSDP" or "FSDP").
    """
    kind = str(getattr(distributed_type, "value", distributed_type)).rsplit(".", 1)[-1].upper()
    if kind in SHARDED_STRATEGIES:
        raise ConfigError(
            f"revival.method is not supported with distributed type {kind}: it shards the parameters, and "
            "revival must edit whole weight matrices identically on every process; run revival with DDP "
            "(multi-GPU/multi-CPU) or one process, or set revival.method=none"
        )


def mlp_layers(model: nn.Module) -> list[nn.Module]:
    """The MLP of every block, through any DDP / torch.compile wrapper (see reviveformer.architectures)."""
    return architectures.of(model).mlps(model)


def model_config(model: nn.Module) -> Any:
    """The Hugging Face config of a possibly wrapped model."""
    return architectures.unwrap(model).config


def site_layers(report: LivenessReport, mlps: list[nn.Module], method: str) -> list[LayerLiveness]:
    """The report's per-layer entries at `mlp_post`, in layer order, checked against the model."""
    layers = report.sites.get(REVIVAL_SITE)
    if not layers:
        raise ConfigError(
            f"revival.method={method} needs the liveness report to include site {REVIVAL_SITE}; "
            f"add {REVIVAL_SITE} to liveness.sites"
        )
    for entry in layers:
        i = entry.layer
        if not 0 <= i < len(mlps):
            raise ValueError(f"liveness report has layer {i} but the model has {len(mlps)} layers")
        units = mlp_units(mlps[i])
        if entry.units != units:
            raise ValueError(f"liveness report has {entry.units} units in layer {i}, the model has {units}")
    return sorted(layers, key=lambda e: e.layer)


def mlp_units(mlp: nn.Module) -> int:
    """The number of units of one MLP (of any architecture: `reviveformer.architectures`)."""
    return architectures.of(mlp).mlp_units(mlp)


def unit_index(units: list[int], n_units: int, device: torch.device) -> torch.Tensor:
    """Sorted unique unit indices as a long tensor on `device` (sorted so every process acts alike)."""
    idx = sorted({int(j) for j in units})
    if idx and not (0 <= idx[0] and idx[-1] < n_units):
        raise ValueError(f"unit indices {idx[0]}..{idx[-1]} out of range for {n_units} units")
    return torch.tensor(idx, dtype=torch.long, device=device)


class Reviver(ABC):
    """A neuron-revival method. Subclasses set `name`, `arm`, `Options`, `layer_metrics` and `run_metrics`, and
    implement `from_config`, `revive` and the state methods."""

    name: ClassVar[str]
    """The `revival.method` value of a built-in, and the name of its config section `revival.<name>`."""
    arm: ClassVar[str]
    """The arm its runs are logged and compared under (W&B job_type when wandb.job_type is unset)."""
    Options: ClassVar[type | None] = None
    """The dataclass of its config section `revival.<name>` (None: the method has no options). Its
    `__post_init__` raises ValueError naming the full key (`revival.<name>.<key>=value must be ...`)."""
    layer_metrics: ClassVar[tuple[str, ...]] = ()
    """Names logged per layer (`revival/layer_<i>/<name>`) and summed over layers (`revival/<name>`)."""
    run_metrics: ClassVar[tuple[str, ...]] = ("count",)
    """Names logged once per revival (`revival/<name>`): running totals such as `count`."""
    acts: ClassVar[str] = "report"
    """When it edits the model: `report` (`revive` edits the units its report, or its own window, singles out;
    an empty report edits nothing), `always` (`revive` edits every weight whatever the report: shrink and
    perturb, fresh start) or `step` (the per-step hooks edit or steer the weights; `revive` only reports)."""

    def __init__(self) -> None:
        self._details: list[dict[str, Any]] = []

    @classmethod
    @abstractmethod
    def from_config(cls, options: Any, *, seed: int = 0) -> Reviver:
        """Build from its own section (an `Options` instance, None when `Options` is None) and the run's seed
        (for methods that draw random numbers)."""

    @classmethod
    def metric_keys(cls, layers: list[int]) -> list[str]:
        """Every key `revive` returns for a model with these layers."""
        keys = [revival_key(k) for k in (*cls.layer_metrics, *cls.run_metrics)]
        return keys + [revival_key(k, i) for i in layers for k in cls.layer_metrics]

    def _metrics(self, details: list[dict[str, Any]], run: dict[str, float]) -> dict[str, float]:
        """`revive`'s metrics from per-layer details (keys `layer_metrics`) and the run totals (`run_metrics`)."""
        metrics = {revival_key(k): float(sum(d[k] for d in details)) for k in self.layer_metrics}
        metrics.update({revival_key(k): float(run[k]) for k in self.run_metrics})
        for d in details:
            for k in self.layer_metrics:
                metrics[revival_key(k, d["layer"])] = float(d[k])
        return metrics

    @abstractmethod
    def revive(self, model: nn.Module, report: LivenessReport, optimizer: Any) -> dict[str, float]:
        """Edit `model` (and reset `optimizer` state) from a liveness report; return `revival/...` metrics.

        `optimizer` may be a torch optimizer, an `AcceleratedOptimizer`, or None (a saved model, no training).
        Every process must get the same report so that every replica makes the same edit.
        """

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Read the step's gradients before the update (on the device, no host sync). Default: nothing."""
        return None

    def on_skipped_steps(self, count: int) -> None:
        """`count` of the steps `before_optimizer_step` saw since the trainer's last read had their update
        skipped (their gradients read as zeros). Default: nothing."""
        return None

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Re-apply persistent masks after an optimizer step (cheap, in place, no host sync). Default: none."""
        return None

    def attach(self, model: nn.Module, optimizer: Any) -> None:
        """Called once before the first training forward with the plain model and its optimizer (None: none).
        Default: nothing."""
        return None

    def close(self) -> None:
        """Remove whatever `attach` registered (hooks). Default: nothing."""
        return None

    def pruned_masks(self) -> dict[int, torch.Tensor] | None:
        """Per layer, a bool mask shaped like the layer's (first) incoming weight: True = pruned and stays pruned.
        None: no pruning."""
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors, ints, lists, str-keyed dicts only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def last_layer_details(self) -> list[dict[str, Any]]:
        """Per layer, the numbers of the last `revive` (keys: layer, dead_units, revived_units, + method's own)."""
        return [dict(d) for d in self._details]

    def _check_method(self, state: dict[str, Any]) -> None:
        if state.get("method", self.name) != self.name:
            raise ValueError(f"revival state is for method {state['method']!r}, not {self.name!r}")

    # ------------------------------------------------------------------ how its revivals read (console, pages)

    title: ClassVar[str] = ""
    """How the console and the report pages name the method ("ReDo"); empty: by its `revival.method` value."""
    event_columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("dead units found", "dead_units"),
        ("weights stripped", "stripped_now"),
        ("held at zero in all", "pruned_total"),
        ("units revived", "revived_units"),
    )
    """The report page's revival table after #, step and when: (header, `RevivalEvent` field) per column."""

    @classmethod
    def describe(cls, event: RevivalEvent, name: str, when: str = "") -> str:
        """The console line of one revival (`name`: the method in words, `when`: e.g. "end of epoch 2").
        Default: the units found dead and the units revived."""
        return f"{event.heading(name, when)}: {event.dead_units:,} dead units found; {event.since()}"

    @classmethod
    def describe_totals(cls, events: Sequence[RevivalEvent], name: str) -> str:
        """The summary's line for all of a run's revivals. Default: the units found dead and revived in all."""
        revived = sum(e.revived_units for e in events)
        return (
            f"{cls._totals_head(events, name)}, {sum(e.dead_units for e in events):,} dead units found in all, "
            f"{revived:,} units revived"
        )

    @staticmethod
    def _totals_head(events: Sequence[RevivalEvent], name: str) -> str:
        """The start of a totals line: the method and how many revivals."""
        return f"revival ({name}): {len(events)} event{'s' * (len(events) != 1)}"


def revived_count(previous: list[int] | None, now: list[int]) -> int:
    """Units in the previous revival's set that are not in the set now (0 at the first revival)."""
    return 0 if previous is None else len(set(previous) - set(now))
