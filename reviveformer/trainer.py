"""The training loop: one canonical Accelerate loop that coordinates the run's parts and does nothing else.

`builder` turns the config into the parts (`build_run`, `build_loop`); each part under `reviveformer/loop/` owns
its timing and state and returns what it decided (alert actions, the report to revive from); the Trainer asks
them at the right moments and acts on their answers. `train_step` runs every micro-batch with no host sync;
`_after_step` once per optimizer step; `_complete_epoch`, `_complete_task` and `RunEnd` at the ends;
`Reactions` acts on what the parts decided. Hooks for
scripts (scripts/bench.py): `before_epoch_end` and `after_train_log`, lists of callables given the trainer.
The contract: docs/design.md, "Training loop", "Resuming".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reviveformer import builder
from reviveformer.builder import param_groups, warmup_cosine
from reviveformer.config import Config
from reviveformer.faults import fault_point
from reviveformer.loop import Position, Reactions, RunControl, TrainWindow
from reviveformer.loop.window import reaches_multiple
from reviveformer.run_checks import check_run_inputs
from reviveformer.summary import Summary

log = logging.getLogger("reviveformer")

PREEMPTED = "preempted"  # the reason _train_epoch returns when a stop signal was agreed

# param_groups, warmup_cosine and reaches_multiple stay importable from here (scripts/bench.py, tests)
__all__ = ["Summary", "Trainer", "param_groups", "reaches_multiple", "train", "warmup_cosine"]


class Trainer:
    """Takes over the parts the builder makes from the config (their one owner) and runs the loop. `run()`
    returns a Summary."""

    def __init__(self, cfg: Config, keep_process_group: bool = False):
        self.cfg = cfg
        # a sweep trains several runs in one process: the process group must outlive each run
        self.keep_process_group = keep_process_group
        self.run_dir = Path(cfg.train.output_dir)
        self.accelerator = builder.build_accelerator(cfg.train)
        self.is_main = self.accelerator.is_main_process
        self.monitor = self.reviver = None
        self.pos = Position()
        self.control = RunControl(self.run_dir, self.accelerator)
        self.before_epoch_end: list[Callable[[Trainer], None]] = []
        """Called at each epoch end before its validation pass (e.g. to read the training's peak memory)."""
        self.after_train_log: list[Callable[[Trainer], None]] = []
        """Called after each train log, its liveness window included (e.g. to time windows of steps)."""
        if not self.is_main:
            log.setLevel(logging.ERROR)  # console logging on the main process only

    @property
    def step(self) -> int:
        return self.pos.step

    @property
    def epoch(self) -> int:
        return self.pos.epoch

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        check_run_inputs(self.cfg)  # the checks across sections, once, before anything is built or written
        self.control.acquire(builder.check_output_dir)
        run = builder.build_run(self.cfg, self.accelerator, self.run_dir)
        # the Trainer owns the parts from here on: the builder's bundle is not kept
        self.data, self.model, self.optimizer, self.scheduler = run.data, run.model, run.optimizer, run.scheduler  # fmt: skip
        self.train_loader, self.task_loaders, self.tasks = run.train_loader, run.task_loaders, run.tasks
        self.monitor, self.reviver, self.pos, self.state = run.monitor, run.reviver, run.pos, run.state
        self.total_steps = run.total_steps
        fault_point("setup")
        # the first writes (folders, config.yaml, W&B) and the parts that log: after every check has passed
        self.tracking = builder.start_outputs(self.cfg, self.accelerator, self.control, self.pos)
        self.parts = builder.build_loop(self.cfg, self.accelerator, run, self.tracking, self.control)

    # ---------------------------------------------------------------- the loop
    def run(self) -> Summary:
        t0 = time.perf_counter()
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            self.control.watch_signals()  # a stop signal during set-up ends the run at once (StoppedInSetup)
            self._setup()
            # console lines (alerts, revivals) are printed above the progress bar, not into its line
            with logging_redirect_tqdm():
                summary = self._loop()
        except BaseException as e:
            ending = self.control.ended_by(e, self.pos)  # status.json says how; a full disk becomes NoSpace
            if ending is e:
                raise
            raise ending from e
        finally:
            self._close()
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _close(self) -> None:
        """Every exit path: tracking finished, hooks removed, the prepared parts dropped, the folder released."""
        if hasattr(self, "tracking"):
            self.tracking.finish()
        if self.monitor is not None:
            self.monitor.close()
        if self.reviver is not None:
            self.reviver.close()  # the hooks a per-step method attached (Continual Backprop)
        for attr in (
            "model", "optimizer", "_inner_optimizer", "scheduler", "train_loader", "task_loaders", "parts",
            "state", "guard", "react",
        ):  # fmt: skip
            self.__dict__.pop(attr, None)  # the parts hold the model or the optimizer too
        builder.release_accelerator(self.accelerator)
        self.control.end()
        if not self.keep_process_group:
            self.accelerator.end_training()

    def _begin(self) -> None:
        """What the steps share: the progress bar, the train log's window and the step guard."""
        tc, acc = self.cfg.train, self.accelerator
        self._bar = builder.progress_bar(self.total_steps, self.pos.step, self.is_main and tc.progress)
        self.window = TrainWindow(tc.log_every, acc.device)
        self._epoch_t0 = self.window.started
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        inner = self._inner_optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        self.guard = builder.build_step_guard(
            self.cfg, acc, self.parts, self.control, self.pos, self.window, self.reviver, self._params, inner
        )
        self.react = Reactions(self.parts.revival, self.guard, self.parts.run_end, self.state, self.pos)
        # a checkpoint holds every step accounted for, and the pending liveness window logged (its alerts' state
        # updated) before it holds the alerts: a resume could not log it any more
        self.state.pending = [self.guard, self.parts.liveness_log]

    def _loop(self) -> Summary:
        tc, pos, tasks, checkpointer = self.cfg.train, self.pos, self.tasks, self.parts.checkpointer
        self._begin()
        stopped_by = None
        self.model.train()
        # with a task sequence the run's length is its tasks' (total_steps): epochs roll on until then
        while stopped_by is None and (tasks is not None or pos.epoch < tc.epochs):
            if self.control.stop_now:  # agreed at the last epoch end's read
                raise self.control.preempted(pos.step, checkpointer.save_unless_saved(pos.step))
            if tasks is not None and tasks.due(pos):
                stopped_by = self._complete_task()
                continue
            if pos.batches_in_epoch < pos.batches_per_epoch:
                if pos.step < self.total_steps:
                    stopped_by = self._train_epoch()
                if stopped_by == PREEMPTED:
                    raise self.control.preempted(pos.step, checkpointer.save_unless_saved(pos.step))
                if stopped_by is None and tasks is not None and tasks.due(pos):
                    continue  # the task's boundary first, then the rest of the epoch (or its end)
                if pos.batches_in_epoch < pos.batches_per_epoch:
                    # left mid-epoch (the step budget or an alert's stop): the epoch has not ended, and a
                    # checkpoint keeps the position within it for a later resume (and the stop, if any)
                    self.state.stopped_by = stopped_by
                    (checkpointer.save if stopped_by else checkpointer.save_unless_saved)(pos.step)
                    break
            # the epoch's data is done (now, or before the checkpoint this run resumed from): its end
            stopped_by = self._complete_epoch() or stopped_by
        self._bar.close()
        self.guard.read()  # a non-finite last step halts before final/ is written
        return self.parts.run_end.finish(self.model, self.data.tokenizer, pos, stopped_by)

    def _train_epoch(self) -> str | None:
        """Train on the rest of the current epoch's data; return early at the step budget or an alert's stop
        (its reason). Leaves `batches_in_epoch` at `batches_per_epoch` when the data ran out."""
        self.train_loader.set_epoch(self.pos.epoch)
        loader = self.train_loader
        if self.pos.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, self.pos.batches_in_epoch)
        self._step_loss = torch.zeros((), device=self.accelerator.device)
        tasks = self.tasks
        for batch in loader:
            if tasks is not None:  # the current task's view of the data (a gather on the device)
                batch = tasks.batch(batch, tasks.current(self.pos))
            grad_norm = self.train_step(batch)
            if grad_norm is not None:  # None: accumulating
                stopped_by = self._after_step(grad_norm)
                if (
                    stopped_by
                    or self.pos.step >= self.total_steps
                    or (tasks is not None and tasks.due(self.pos))
                ):
                    return stopped_by
                if self.control.stop_now:  # agreed at a read of this step, by every process
                    return PREEMPTED
        return None

    def train_step(self, batch: dict) -> torch.Tensor | None:
        """One micro-batch: forward and backward; on the step's last micro-batch the optimizer step and the step
        counter. Returns the step's gradient norm once an optimizer step is taken (a device scalar); None while
        accumulating. No host sync: a non-finite step is skipped on the device and still counts as a step (its
        update skipped); its verdict is read at the next `StepGuard.read`."""
        tc, acc, pos = self.cfg.train, self.accelerator, self.pos
        model, optimizer = self.model, self.optimizer
        if self.monitor is not None:
            self.monitor.begin_step(pos.step + 1)  # its own sampling and histogram cadence
        with acc.accumulate(model):
            # no KV cache in training: it is never read, and it adds outputs to every forward (and graph)
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
            self._step_loss += loss.detach() / tc.grad_accum
            acc.backward(loss)
            pos.batches_in_epoch += 1
            if not acc.sync_gradients:
                return None
            fault_point("mid_step")
            max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = acc.clip_grad_norm_(self._params, max_norm)
            mean_loss = self.control.agree(self._step_loss)
            bad = self.guard.check(pos.step + 1, mean_loss, grad_norm)  # the verdict, on the device
            if self.guard.skip_update_if(bad):
                # GraMa reads the step's gradients here (clipped; zeros if skipped)
                if self.reviver is not None:
                    self.reviver.before_optimizer_step(acc.unwrap_model(model))
                optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        if self.reviver is not None:
            self.reviver.after_optimizer_step(acc.unwrap_model(model))
        self.guard.count(mean_loss, bad)
        self._step_loss = torch.zeros((), device=acc.device)
        self._bar.update(1)
        return grad_norm

    def _after_step(self, grad_norm: torch.Tensor) -> str | None:
        """Step-level work, once per optimizer step: each part at its own cadence, in this order. Returns an
        alert's stop reason, if any."""
        stopped_by = None
        step = self.pos.step
        if self.monitor is not None and self.monitor.histogram_due(step):
            self.parts.liveness_log.log_activation_histograms(self.monitor.histograms(), step)
        if self.window.due(step):
            loss_sum, norm = self.guard.read(self.window.loss, grad_norm)
            _, steps, tokens_per_s = self.window.take()
            # host tensors of the values read: TrainLog's .item() and float() cost no further sync
            window = (torch.tensor(loss_sum), steps, tokens_per_s)
            lr = self.scheduler.get_last_lr()[0]
            actions = self.parts.train_log.log(step, self.pos.epoch, window, torch.tensor(norm), lr)
            for hook in self.after_train_log:
                hook(self)
            # kept in the position: a task boundary reports it, also one resumed from a checkpoint at its step
            self.pos.task_train_loss = loss_sum / max(steps, 1)
            self._bar.set_postfix(loss=f"{self.pos.task_train_loss:.3f}")
            stopped_by = self.react.act_on_alerts(actions)
        if self.parts.validator.should_validate(step):
            self.parts.validator.validate(step)
        if self.parts.revival_timing.due_after_step(step):
            self.react.revive()
        self.parts.checkpointer.after_step(step)
        return stopped_by

    def _complete_epoch(self) -> str | None:
        """The end of the epoch whose data is done: the epoch counter moves on, then its measurement, liveness
        json and plots (`EpochEnd`), its revival, then a checkpoint. Returns an alert's stop reason, if any."""
        self.guard.read()  # the epoch's last steps accounted for (a halt comes before its epoch end)
        epoch = self.pos.epoch
        self.pos.epoch += 1
        self.pos.batches_in_epoch = 0
        epoch_seconds = time.perf_counter() - self._epoch_t0  # training time of the epoch, before its eval
        for hook in self.before_epoch_end:
            hook(self)
        report, actions = self.parts.epoch_end.run(epoch, self.pos.step, epoch_seconds)
        stopped_by = self.react.after_end(
            report, actions, self.parts.revival_timing.at_epoch_end, "after_revival"
        )
        self.parts.checkpointer.save(self.pos.step)
        self._epoch_t0 = time.perf_counter()
        return stopped_by

    def _complete_task(self) -> str | None:
        """The boundary of the task whose steps are done: `TaskEnd` (its held-out loss, row and liveness json),
        the boundary's revival (not after the last task: the final weights are the trained ones), the switch to
        the next task's data, then a checkpoint. Returns an alert's stop reason, if any."""
        pos, k = self.pos, self.pos.task
        report, actions = self.parts.task_end.run(k, pos.step, pos.task_train_loss, self._params)
        last = k + 1 >= self.tasks.count
        revive = self.parts.revival_timing.at_task_end and not last
        stopped_by = self.react.after_end(
            report, actions, revive, "after_task_revival", when=f"end of task {k}"
        )
        pos.task += 1  # the switch: from here on every batch is task k + 1's
        if len(self.task_loaders) > 1 and not last:  # a corpus of its own: a first pass over it starts
            self.train_loader = self.task_loaders[pos.task]
            pos.batches_per_epoch = len(self.train_loader)
            pos.batches_in_epoch = 0
        self.parts.checkpointer.save(pos.step)
        fault_point("task_start")
        return stopped_by


def train(cfg: Config, keep_process_group: bool = False) -> Summary:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(cfg, keep_process_group=keep_process_group).run()
