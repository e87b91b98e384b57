"""`ReviveformerCallback`: liveness, alerts and revival for a `transformers.Trainer`, through the Trainer's own
events and logging (docs/api.md).

    from reviveformer.integrations.transformers import ReviveformerCallback
    ReviveformerCallback(revival="redo", every_steps=50).add_to(trainer)

The counts are the monitor's (docs/design.md definitions), summed over the Trainer's processes before any number
is logged or any decision made. A log window is the training steps since the previous log; a revival decides from
the training tokens counted since the previous revival (the Trainer has no validation pass of its own to measure
on). Evaluation forwards between steps are not counted.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from reviveformer import architectures
from reviveformer.alerts import AlertManager, console_sink
from reviveformer.api import make_reviver
from reviveformer.architectures import MLP_SITE
from reviveformer.config import AlertRule, AlertsConfig, value_problems
from reviveformer.integrations import callback_state
from reviveformer.liveness import LivenessConfig, LivenessCounts, LivenessMonitor, capacity
from reviveformer.revival.optim import torch_optimizer


def _sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the Trainer's processes (itself on one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


class _Window:
    """Host-side sums of the monitor's counts over several drains (a log window, or the steps since a revival)."""

    def __init__(self) -> None:
        self.counts: LivenessCounts | None = None

    def add(self, c: LivenessCounts) -> None:
        if self.counts is None:
            self.counts = LivenessCounts(
                c.cfg,
                {s: a.copy() for s, a in c.fire_count.items()},
                {s: a.copy() for s, a in c.abs_sum.items()},
                {s: a.copy() for s, a in c.tokens.items()},
            )
            return
        for mine, theirs in (
            (self.counts.fire_count, c.fire_count),
            (self.counts.abs_sum, c.abs_sum),
            (self.counts.tokens, c.tokens),
        ):
            for s in mine:
                mine[s] += theirs[s]

    def take(self, model: torch.nn.Module, pruned: dict[int, torch.Tensor] | None) -> LivenessCounts | None:
        """The summed counts (None when no token was counted), with capacity from their dead units; clears."""
        c, self.counts = self.counts, None
        if c is None or c.max_tokens == 0:
            return None
        if MLP_SITE in c.fire_count:
            dead = {
                i: np.flatnonzero(f / max(int(t), 1) < c.cfg.dead_frequency).tolist()
                for i, (f, t) in enumerate(zip(c.fire_count[MLP_SITE], c.tokens[MLP_SITE], strict=True))
            }
            c.capacity = capacity(model, dead, pruned)
        return c


class ReviveformerCallback(TrainerCallback):
    """Watch (and optionally revive) the MLP units of a GPT-2 trained by a `transformers.Trainer`.

    At `on_train_begin` it attaches a `LivenessMonitor` to the Trainer's model; every training forward counts
    (evaluation forwards do not). At each Trainer log it adds the window's `liveness/...` and `capacity/...`
    metrics (docs/design.md names) to the log, so every `report_to` tracker and `state.log_history` get them,
    and checks `alerts` (an `AlertManager` with the console sink on the main process): a fired rule with action
    `revive` revives now, `stop` ends training (`control.should_training_stop`). `revival` (a method name, see
    `reviveformer.make_reviver`, with its options in `revival_options`) runs every `every_steps` optimizer
    steps, or at each epoch end when `every_steps` is 0, on the training tokens counted since the previous
    revival, and resets the Trainer's own optimizer state (the torch optimizer behind Accelerate's wrapper) of
    exactly what it edits; its `revival/...` metrics join the next log. `on_save` keeps its state in the
    Trainer's checkpoint and a resumed Trainer restores it (`callback_state`). `on_train_end` detaches the
    monitor.

    Use `add_to(trainer)` rather than `trainer.add_callback`: the Trainer calls its `report_to` callbacks in
    the order they were added, and `add_to` puts this one first so that they see its metrics."""

    def __init__(
        self,
        revival: str = "none",
        *,
        every_steps: int = 0,
        revival_options: dict[str, Any] | None = None,
        liveness: LivenessConfig | None = None,
        alerts: list[AlertRule] | AlertsConfig | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 0:
            raise ValueError(
                f"every_steps={every_steps!r} must be a whole number >= 0 (0: revive at each epoch end)"
            )
        self.liveness = liveness or LivenessConfig()
        self.alerts_config = (
            alerts if isinstance(alerts, AlertsConfig) else AlertsConfig(rules=list(alerts or []))
        )
        # the checks the command line runs on the same sections (non-finite values, values beyond a range)
        if problems := value_problems(self.liveness, "liveness") + value_problems(
            self.alerts_config, "alerts"
        ):
            raise ValueError("; ".join(problems))
        self.every_steps = every_steps
        # built now, so that a bad method or option fails before training starts
        self.reviver = (
            None if revival == "none" else make_reviver(revival, seed=seed, **(revival_options or {}))
        )
        self.monitor: LivenessMonitor | None = None
        self.last_counts: LivenessCounts | None = None
        """The process-summed counts of the last log window that counted tokens (what its metrics came from)."""
        self.alerts: AlertManager | None = None
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._log_window, self._revival_window = _Window(), _Window()
        self._pending: dict[str, float] = {}  # revival metrics waiting for the next log
        self._between_steps = contextlib.ExitStack()

    def add_to(self, trainer: Any) -> ReviveformerCallback:
        """Add this callback to `trainer` ahead of its other callbacks (so its metrics reach the trackers)."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError(
                "ReviveformerCallback needs the Trainer's model (it was not passed to on_train_begin)"
            )
        self._model = architectures.unwrap(model)
        self._optimizer = torch_optimizer(optimizer)
        try:
            self.monitor = LivenessMonitor(self._model, self.liveness)
            if self.reviver is not None:
                self.reviver.attach(self._model, self._optimizer)
        except BaseException:  # a failed start leaves the user's model as it found it
            if self.monitor is not None:
                self.monitor.close()
                self.monitor = None
            if self.reviver is not None:
                self.reviver.close()
            raise
        self.alerts = AlertManager(self.alerts_config, [console_sink] if state.is_world_process_zero else [])
        callback_state.load(self, args, state)  # a resumed Trainer: go on from its checkpoint's state

    def _started(self) -> LivenessMonitor:
        if self.monitor is None:
            raise RuntimeError(
                "ReviveformerCallback: a training event came before on_train_begin (add the callback to the "
                "Trainer before trainer.train(), e.g. ReviveformerCallback(...).add_to(trainer))"
            )
        return self.monitor

    def on_step_begin(self, args, state, control, **kwargs):
        monitor = self._started()
        self._between_steps.close()  # counting resumes (it was paused after the previous step)
        monitor.begin_step(state.global_step + 1)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._started()
        if self.reviver is not None:
            self.reviver.before_optimizer_step(self._model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._started()
        if self.reviver is not None:
            self.reviver.after_optimizer_step(self._model)

    def on_step_end(self, args, state, control, **kwargs):
        # evaluation and logging forwards between two steps are not training tokens
        self._between_steps.enter_context(self._started().paused())
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.revive()

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.every_steps:
            self.revive()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.monitor is None:
            return
        self._drain()
        counts = self._log_window.take(self._model, self._pruned())
        metrics: dict[str, float] = {}
        if counts is not None:  # a window with no token (an evaluation log) logs no liveness numbers
            self.last_counts = counts
            metrics.update(counts.metrics())
            outcome = self.alerts.check(metrics, state.global_step)
            metrics.update(outcome.metrics)
            if outcome.should_stop:
                control.should_training_stop = True
            if outcome.should_revive:
                self.revive()
        metrics.update(self._pending)  # revivals since the previous log, this one's included
        self._pending.clear()
        logs.update(metrics)
        if state.log_history:  # the Trainer copied `logs` there before calling us
            state.log_history[-1].update(metrics)

    def on_save(self, args, state, control, **kwargs):
        """Keep this callback's state in the checkpoint the Trainer has just written (see `callback_state`)."""
        monitor = self._started()
        saved = monitor.state_dict()
        device = next(self._model.parameters()).device
        for counts in saved["sites"].values():  # summed over processes: one state for every process to read
            for k, t in counts.items():
                counts[k] = _sum_over_processes(t.to(device)).cpu()
        callback_state.save(self, args, state, saved)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    # ------------------------------------------------------------------ the work
    def revive(self) -> dict[str, float]:
        """Run the revival method on the training tokens counted since the previous revival (on every process:
        the counts are summed over processes first). Its metrics are logged with the next log and returned;
        nothing happens without a method or when no token was counted."""
        if self.reviver is None or self.monitor is None:
            return {}
        self._drain()
        counts = self._revival_window.take(self._model, self._pruned())
        if counts is None:
            return {}
        metrics = self.reviver.revive(self._model, counts.report(), self._optimizer)
        self._pending.update(metrics)
        return metrics

    def _drain(self) -> None:
        """Move the monitor's counters (summed over processes) into both windows and zero them."""
        c = self.monitor.counts(_sum_over_processes)
        self.monitor.reset()
        self._log_window.add(c)
        self._revival_window.add(c)

    def _pruned(self) -> dict[int, torch.Tensor] | None:
        return self.reviver.pruned_masks() if self.reviver is not None else None

    def close(self) -> None:
        """Detach the monitor and the reviver's hooks: the model is left exactly as it was given."""
        self._between_steps.close()
        if self.reviver is not None:
            self.reviver.close()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
