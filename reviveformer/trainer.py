"""The training loop: one canonical Accelerate loop that coordinates the run's parts and does nothing else.

`builder` turns the config into the parts (model and data, optimizer and schedule, monitor and reviver,
tracking and alerts); `resume` decides where a run continues; the parts under `reviveformer/loop/` own their
timing and state. This module calls them at the right moments:

- `train_step`, every micro-batch: forward/backward inside `accelerator.accumulate`; on the step's last one
  (`sync_gradients`) clip, the non-finite verdict (`BadSteps`, on the device), optimizer step (a no-op on the
  device when non-finite), revival masks, step counter: no host sync;
- `_read`, at the train log, a checkpoint, a revival, an epoch end and the finish: the one host read of what
  the steps since the last left on the device (non-finite verdicts, the agreed stop vote, the log's values);
- `_after_step`, once per optimizer step, asks each part whether its moment has come, in a fixed order:
  activation histograms (the monitor's `histogram_every`), the train log with the liveness window and alerts
  (`TrainWindow`, `log_every`), validation (`Validator`, `eval_every`), revival (`RevivalTiming`,
  `every_steps`), the periodic checkpoint (`Checkpointer`, `checkpoint_every`);
- `_complete_epoch`: the epoch counter moves on, then `EpochEnd` (validation pass with a fresh liveness window,
  liveness json, plots, revival), then a checkpoint;
- `_complete_task`, with a task sequence (`tasks.TaskSequence`), at each task's last step: the task's held-out
  loss with a fresh liveness window, the per-task row and `liveness/task_XXX.json`, the boundary's revival
  (`revival.every=task`), the switch to the next task's data, then a checkpoint.

Hooks for scripts (scripts/bench.py): `before_epoch_end` and `after_train_log`, lists of callables given the
trainer.

The position in training (`loop.Position`: step, epoch, batches_in_epoch, task) is saved in every checkpoint. The
contract: docs/design.md, "Training loop", "Resuming".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from reviveformer import builder, metric_keys, resume
from reviveformer import checkpoint as ckpt
from reviveformer.builder import param_groups, warmup_cosine
from reviveformer.config import Config, to_dict
from reviveformer.errors import Preempted, TrainingHalted
from reviveformer.evaluation import evaluate, measure
from reviveformer.faults import fault_point
from reviveformer.liveness import LivenessMonitor, LivenessReport
from reviveformer.loop import (
    BadSteps,
    Checkpointer,
    EpochEnd,
    LivenessLog,
    Position,
    RevivalPass,
    RevivalTiming,
    RunControl,
    TrainLog,
    TrainWindow,
    Validator,
)
from reviveformer.loop.epoch_end import write_json
from reviveformer.loop.liveness_log import dead_ratios, site_dormant_ratios
from reviveformer.loop.window import reaches_multiple
from reviveformer.revival import Reviver, arm_of_method
from reviveformer.run_checks import check_run_inputs
from reviveformer.summary import Summary, write_final
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")

PREEMPTED = "preempted"  # the reason _train_epoch returns when a stop signal was agreed

# param_groups, warmup_cosine and reaches_multiple stay importable from here (scripts/bench.py, tests)
__all__ = ["Summary", "Trainer", "param_groups", "reaches_multiple", "release", "train", "warmup_cosine"]


class Trainer:
    """Builds every part from the config and runs the loop. `run()` returns a Summary."""

    def __init__(self, cfg: Config, keep_process_group: bool = False):
        self.cfg = cfg
        # a sweep trains several runs in one process: the process group must outlive each run
        self.keep_process_group = keep_process_group
        self.run_dir = Path(cfg.train.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.train.grad_accum,
            mixed_precision=cfg.train.mixed_precision,
            dynamo_backend="inductor" if cfg.train.compile else "no",
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            step_scheduler_with_optimizer=False,
        )
        self.is_main = self.accelerator.is_main_process
        self.monitor: LivenessMonitor | None = None
        self.pos = Position()
        self.stopped_by: str | None = None
        """An alert's stop, recorded in the checkpoints saved after it."""
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

    @property
    def total_steps(self) -> int:
        return self.run_parts.total_steps

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        check_run_inputs(self.cfg)  # the checks across sections, once, before anything is built or written
        self.control.acquire(builder.check_output_dir)
        run = self.run_parts = builder.build_run(self.cfg, self.accelerator, self.run_dir)
        for name in (
            "data",
            "model",
            "optimizer",
            "scheduler",
            "train_loader",
            "val_loader",
            "monitor",
            "reviver",
            "tasks",
        ):
            setattr(self, name, getattr(run, name))
        self.pos, self.batches_per_epoch = run.pos, run.batches_per_epoch
        tc = self.cfg.train
        self.checkpointer = Checkpointer(
            self.accelerator, self.run_dir / "checkpoints", tc.checkpoint_every, tc.checkpoint_limit, self.model,
            state=self._state,
        )  # fmt: skip
        if run.saved is not None:
            self.checkpointer.mark_saved(self.pos.step)  # that checkpoint holds this position already
        self._start_outputs(run.saved)

    def _start_outputs(self, saved: dict | None) -> None:
        """The first writes (folders, config.yaml, W&B) and the parts that log: after every check has passed."""
        cfg, acc, tc = self.cfg, self.accelerator, self.cfg.train
        self.job_type = cfg.wandb.job_type or arm_of_method(cfg.revival.method)
        self.control.start()
        if self.is_main:
            builder.start_run_dir(cfg, self.run_dir)
        self.tracking = Tracking(acc, cfg.wandb, self.run_dir, to_dict(cfg), self.job_type)
        self.control.status("running", self.pos)
        self.alerts = builder.build_alerts(cfg.alerts, self.tracking, self.run_dir, self.is_main)
        if saved is not None:
            self.alerts.load_state_dict(saved["alerts"])
        # a train log's liveness window is read (and logged under its step) at the next moment that syncs anyway:
        # each measurement below settles it first, and so do the next train log and a checkpoint (`_state`)
        live = self.liveness_log = LivenessLog(self.alerts, self.tracking, self.is_main)
        snapshot = lambda: self.monitor.snapshot(sum_processes=True, pruned_masks=self._pruned_masks())  # noqa: E731
        lc = cfg.liveness
        self.train_log = TrainLog(
            self.tracking, live, self.monitor, snapshot, tc.log_every, lc.frequency_histogram_every
        )
        self.validator = Validator(
            tc.eval_every,
            evaluate=live.settling(lambda: self.evaluate(tc.eval_batches)),
            log=lambda val, step: self.tracking.log(val, step=step),
        )
        self.revival_timing = RevivalTiming(
            self.reviver is not None, cfg.revival.every_steps, cfg.revival.every
        )
        self.revival = None
        if self.reviver is not None:
            self.revival = RevivalPass(
                self.reviver, cfg.revival.method, cfg.liveness.sites, lambda: acc.unwrap_model(self.model),
                self.optimizer, live.settling(lambda: self.measure(tc.eval_batches)), self.tracking, self.run_dir, self.is_main,
            )  # fmt: skip
        self.epoch_end = EpochEnd(
            self.run_dir, self.is_main, self.monitor, live.settling(lambda: self.measure(tc.eval_batches)), self.validator,
            self.tracking, self.liveness_log, self.revive if self.revival_timing.at_epoch_end else None,
            plots=tc.plots and self.tasks is None,  # a task sequence draws them at its boundaries instead
        )  # fmt: skip
        self.nonfinite = BadSteps(tc.max_bad_steps, self.run_dir / "checkpoints")

    # ---------------------------------------------------------------- state
    def _state(self) -> dict:
        self._read()  # a checkpoint holds the position with every skipped step accounted for
        # the pending liveness window too: logged (and its alerts' state updated) before the checkpoint holds
        # the alerts and a resume could not log it any more
        self.liveness_log.settle()
        return resume.training_state(
            self.pos, self.batches_per_epoch, self.cfg, self.accelerator, self.monitor, self.reviver, self.alerts,
            stopped_by=self.stopped_by,
        )  # fmt: skip

    # ---------------------------------------------------------------- measurement and revival
    def _pruned_masks(self):
        return self.reviver.pruned_masks() if self.reviver else None

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Validation loss only; the monitor is paused so the training window holds training tokens alone."""
        with self.monitor.paused() if self.monitor is not None else contextlib.nullcontext():
            return evaluate(self.model, self.val_loader, self.accelerator, max_batches)

    def measure(self, max_batches: int | None = None) -> tuple[dict[str, float], LivenessReport | None]:
        masks = self._pruned_masks()
        return measure(self.model, self.val_loader, self.accelerator, self.monitor, masks, max_batches)

    def revive(self, report: LivenessReport | None = None, when: str | None = None) -> dict[str, float]:
        """One revival pass (measured on the validation split unless a fresh report is given); `when` words
        the moment for the console line (by default the epoch's)."""
        if self.revival is None:
            return {}
        self._read()  # a reviver that counts steps (GraMa) has its skipped steps taken out before it decides
        # batches_in_epoch is reset when an epoch ends, before its epoch-end work
        pos = self.pos
        if when is None:
            when = (
                f"end of epoch {pos.epoch}" if pos.batches_in_epoch == 0 else f"during epoch {pos.epoch + 1}"
            )
        return self.revival(pos.step, when, report)

    def _act_on_alerts(self, actions: set[str]) -> str | None:
        if "revive" in actions and self.reviver is not None:
            log.warning("alert action: reviving now (step %d)", self.step)
            self.revive()
        if "stop" in actions:
            return "alert action stop"
        return None

    # ---------------------------------------------------------------- the loop
    def run(self) -> Summary:
        t0 = time.perf_counter()
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            self._setup()
            # console lines (alerts, revivals) are printed above the progress bar, not into its line
            with logging_redirect_tqdm():
                summary = self._loop()
        except (TrainingHalted, Preempted) as e:
            self.control.status("halted" if isinstance(e, TrainingHalted) else "preempted", self.pos, str(e))
            raise
        finally:
            if hasattr(self, "tracking"):
                self.tracking.finish()
            if self.monitor is not None:
                self.monitor.close()
            if getattr(self, "reviver", None) is not None:
                self.reviver.close()  # the hooks a per-step method attached (Continual Backprop)
            for attr in (
                "model", "optimizer", "_inner_optimizer", "scheduler", "train_loader", "val_loader", "checkpointer"
            ):  # fmt: skip
                self.__dict__.pop(attr, None)
            for part in ("revival", "epoch_end", "run_parts"):  # they hold the model or the optimizer too
                self.__dict__.pop(part, None)
            release(self.accelerator)
            self.control.end()
            if not self.keep_process_group:
                self.accelerator.end_training()
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _loop(self) -> Summary:
        tc, acc, pos = self.cfg.train, self.accelerator, self.pos
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=self.total_steps,
            initial=pos.step,
            disable=not (self.is_main and tc.progress),
            desc="training",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 30.0,
        )  # a log file gets a line every 30 s
        self.window = TrainWindow(tc.log_every, acc.device)
        self._epoch_t0 = self.window.started
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        inner = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        self._inner_optimizer = inner
        self._fused = bool(inner.defaults.get("fused"))
        # a reviver that reads gradients (GraMa) is shown zeros on a skipped step, not the NaN
        self._mask_grads = self.reviver is not None and (
            type(self.reviver).before_optimizer_step is not Reviver.before_optimizer_step
        )
        self._tokens_per_step = tc.batch_size * self.cfg.data.block_size * tc.grad_accum * acc.num_processes
        stopped_by = None
        self.model.train()
        tasks = self.tasks
        # with a task sequence the run's length is its tasks' (total_steps): epochs roll on until then
        while stopped_by is None and (tasks is not None or pos.epoch < tc.epochs):
            if self.control.stop_now:  # agreed at the last epoch end's read
                self._preempt()
            if tasks is not None and tasks.due(pos):
                stopped_by = self._complete_task()
                continue
            if pos.batches_in_epoch < self.batches_per_epoch:
                if pos.step < self.total_steps:
                    stopped_by = self._train_epoch()
                if stopped_by == PREEMPTED:
                    self._preempt()
                if stopped_by is None and tasks is not None and tasks.due(pos):
                    continue  # the task's boundary first, then the rest of the epoch (or its end)
                if pos.batches_in_epoch < self.batches_per_epoch:
                    # left mid-epoch (the step budget or an alert's stop): the epoch has not ended, and a
                    # checkpoint keeps the position within it for a later resume (and the stop, if any)
                    self.stopped_by = stopped_by
                    (self.checkpointer.save if stopped_by else self.checkpointer.save_unless_saved)(pos.step)
                    break
            # the epoch's data is done (now, or before the checkpoint this run resumed from): its end
            stopped_by = self._complete_epoch() or stopped_by
        self._bar.close()
        return self._finish(stopped_by)

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

    def _preempt(self) -> None:
        """Save the position reached and leave with `Preempted` (exit 75)."""
        self.checkpointer.save_unless_saved(self.pos.step)
        path = self.run_dir / "checkpoints" / ckpt.step_dir_name(self.pos.step)
        raise Preempted(
            f"{self.control.preemption.name or 'a stop signal'} at step {self.pos.step}: checkpoint {path} saved; continue "
            "with train.resume=auto (the resume is exact)"
        )

    def train_step(self, batch: dict) -> torch.Tensor | None:
        """One micro-batch: forward and backward; on the step's last micro-batch the optimizer step and the step
        counter. Returns the step's gradient norm once an optimizer step is taken (a device scalar); None while
        accumulating. No host sync: a non-finite step is skipped on the device and still counts as a step (its
        update skipped); its verdict is read at the next `_read`."""
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
            # a gradient scaler skips an inf-gradient step by itself; without one (fp16 on CPU, bf16, fp32) the
            # gradient norm must be finite too
            bad = self.nonfinite.check(pos.step + 1, mean_loss, grad_norm, check_norm=acc.scaler is None)
            if self._skip_update_if(bad):
                if (
                    self.reviver is not None
                ):  # GraMa reads the step's gradients here (clipped; zeros if skipped)
                    self.reviver.before_optimizer_step(acc.unwrap_model(model))
                optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        if self.reviver is not None:
            self.reviver.after_optimizer_step(acc.unwrap_model(model))
        self.window.add(mean_loss.masked_fill(bad, 0.0), self._tokens_per_step)
        self._step_loss = torch.zeros((), device=acc.device)
        pos.tokens_seen += self._tokens_per_step  # a skipped step's tokens are taken out at the read
        self._bar.update(1)
        return grad_norm

    def _skip_update_if(self, bad: torch.Tensor) -> bool:
        """Make this step's update a no-op on the device when `bad` (a 0-dim bool device tensor) holds; returns
        whether to call the optimizer step. The fused AdamW's `found_inf` (the flag a GradScaler hands it)
        skips inside the kernel: parameters, exp_avg, exp_avg_sq and the step count untouched, at no cost and
        with no copy (a snapshot restored with torch.where would cost a copy of weights and state per step;
        a zero gradient or zero lr still moves AdamW's weights through momentum and decay)."""
        if self._mask_grads:  # masked_fill_, not a multiply: NaN * 0 is NaN
            for p in self._params:
                if p.grad is not None:
                    p.grad.masked_fill_(bad, 0.0)
        if not self._fused:  # no fused kernel on this device: the host decides (one sync per step)
            return not bool(bad)
        found_inf = bad.float()  # the kernel skips when it is exactly 1.0
        scaler = self.accelerator.scaler
        if scaler is None:
            self._inner_optimizer.found_inf = found_inf  # read by AdamW.step (torch.optim.adam, `found_inf`)
        else:
            # fp16 on CUDA: GradScaler sets the kernel's found_inf from its own per-device flags (filled by
            # unscale_ in clip_grad_norm_), overwriting ours: the loss's verdict joins those flags
            state = scaler._per_optimizer_states[id(self._inner_optimizer)]
            for flag in state["found_inf_per_device"].values():
                torch.maximum(flag, found_inf.to(flag.device), out=flag)
        return True

    def _read(self, *scalars: torch.Tensor) -> list[float]:
        """The one host read of what the optimizer steps since the last read left on the device, in one copy:
        their non-finite verdicts (`BadSteps`: warnings, the halt past train.max_bad_steps; skipped steps taken
        out of the window, the tokens seen and the reviver's count), the stop vote agreed over processes
        (`RunControl.stop_now`), and `scalars` (the train log's), returned as floats. Called at the train log, a
        checkpoint, a revival, an epoch end and the finish: steps every process reaches together."""
        rows, votes = self.nonfinite.rows(), self.control.votes()
        parts = [t for t in (rows, votes) if t is not None]
        parts += [s.detach().float().reshape(1) for s in scalars]
        values = torch.cat(parts).tolist() if parts else []
        n_rows = 0 if rows is None else rows.numel()
        before = self.pos.bad_steps
        self.pos.bad_steps = self.nonfinite.settle(
            values[:n_rows], before, check_norm=self.accelerator.scaler is None
        )
        if skipped := self.pos.bad_steps - before:
            self.pos.tokens_seen -= skipped * self._tokens_per_step
            self.window.drop_skipped(skipped, self._tokens_per_step)
            if self.reviver is not None:
                self.reviver.on_skipped_steps(skipped)
        self.control.read_votes(values[n_rows] if votes is not None else None)
        return values[len(values) - len(scalars) :]

    def _after_step(self, grad_norm: torch.Tensor) -> str | None:
        """Step-level work, once per optimizer step: each part at its own cadence, in this order. Returns an
        alert's stop reason, if any."""
        stopped_by = None
        step = self.pos.step
        if self.monitor is not None and self.monitor.histogram_due(step):
            self.liveness_log.log_activation_histograms(self.monitor.histograms(), step)
        if self.window.due(step):
            loss_sum, norm = self._read(self.window.loss, grad_norm)
            _, steps, tokens_per_s = self.window.take()
            # host tensors of the values read: TrainLog's .item() and float() cost no further sync
            window = (torch.tensor(loss_sum), steps, tokens_per_s)
            lr = self.scheduler.get_last_lr()[0]
            actions = self.train_log.log(step, self.pos.epoch, window, torch.tensor(norm), lr)
            for hook in self.after_train_log:
                hook(self)
            # kept in the position: a task boundary reports it, also one resumed from a checkpoint at its step
            self.pos.task_train_loss = loss_sum / max(steps, 1)
            self._bar.set_postfix(loss=f"{self.pos.task_train_loss:.3f}")
            stopped_by = self._act_on_alerts(actions)
        if self.validator.should_validate(step):
            self.validator.validate(step)
        if self.revival_timing.due_after_step(step):
            self.revive()
        self.checkpointer.after_step(step)
        return stopped_by

    def _complete_epoch(self) -> str | None:
        """The end of the epoch whose data is done: the epoch counter moves on, then its measurement, liveness
        json, plots and revival (`EpochEnd`), then a checkpoint. Returns an alert's stop reason, if any."""
        self._read()  # the epoch's last steps accounted for (a halt comes before its epoch end)
        epoch = self.pos.epoch
        self.pos.epoch += 1
        self.pos.batches_in_epoch = 0
        epoch_seconds = time.perf_counter() - self._epoch_t0  # training time of the epoch, before its eval
        for hook in self.before_epoch_end:
            hook(self)
        actions = self.epoch_end.run(epoch, self.pos.step, epoch_seconds)
        # the epoch end's own revival has just run: an alert's `revive` would only repeat it
        stopped_by = self.stopped_by = self._act_on_alerts(
            actions - ({"revive"} if self.revival_timing.at_epoch_end else set())
        )
        fault_point("after_revival")
        self.checkpointer.save(self.pos.step)
        self._epoch_t0 = time.perf_counter()
        return stopped_by

    def _complete_task(self) -> str | None:
        """The boundary of the task whose steps are done: its held-out loss with a fresh liveness window, the
        per-task row (`task/*` and the liveness ratios) and `liveness/task_XXX.json`, the boundary's revival
        (not after the last task: the final weights are the trained ones), the switch to the next task's data,
        then a checkpoint. Returns an alert's stop reason, if any."""
        pos, k = self.pos, self.pos.task
        fault_point("task_end")
        val, report = self.measure(self.cfg.train.eval_batches)  # still task k's data: pos.task is k
        self.validator.record(val, pos.step)
        row = {
            metric_keys.TASK_INDEX: k,
            metric_keys.TASK_TRAIN_LOSS: pos.task_train_loss,
            metric_keys.TASK_VAL_LOSS: val[metric_keys.VAL_LOSS],
            metric_keys.TASK_WEIGHT_NORM: self._weight_norm(),
        }
        actions: set[str] = set()
        if report is not None:
            self.epoch_end.last_report = report  # the summary's dead ratios: the latest measurement's
            row.update(site_dormant_ratios(report))
            actions = self.liveness_log.log(report, pos.step, when=f"end of task {k}", extra=row)
            if self.is_main:
                data = report.to_json()
                write_json(self.run_dir / "liveness" / f"task_{k:03d}.json", data)
                if self.cfg.train.plots:
                    self.epoch_end.draw(data, pos.step)
        else:
            self.tracking.log(row, step=pos.step)
        last = k + 1 >= self.tasks.count
        at_task_end = self.revival_timing.at_task_end and not last
        if at_task_end:
            self.revive(report, when=f"end of task {k}")
        fault_point("after_task_revival")
        stopped_by = self.stopped_by = self._act_on_alerts(actions - ({"revive"} if at_task_end else set()))
        pos.task += 1  # the switch: from here on every batch is task k + 1's
        loaders = self.run_parts.task_loaders
        if len(loaders) > 1 and not last:  # a corpus of its own: a first pass over it starts
            self.train_loader = loaders[pos.task]
            self.batches_per_epoch = len(self.train_loader)
            pos.batches_in_epoch = 0
        self.checkpointer.save(pos.step)
        fault_point("task_start")
        return stopped_by

    def _weight_norm(self) -> float:
        """L2 norm of all trainable weights (the same on every process)."""
        squares = [p.detach().float().pow(2).sum() for p in self._params]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0

    def _finish(self, stopped_by: str | None) -> Summary:
        acc, pos, sites = self.accelerator, self.pos, self.cfg.liveness.sites
        self._read()  # a non-finite last step halts before final/ is written
        report = self._measure_final()
        ckpt.check_finite_weights(self.model, "final/")
        acc.wait_for_everyone()
        if self.is_main:
            write_final(acc.unwrap_model(self.model), self.data.tokenizer, self.cfg, self.run_dir)
            self.control.status("stopped" if stopped_by else "finished", pos, stopped_by, final_step=pos.step)
        acc.wait_for_everyone()
        dead = dead_ratios(report, sites) if report is not None else {}
        after = {}
        if self.revival is not None and self.revival.revived:
            after = dead  # measured on the final weights, after this session's last revival
            self.tracking.log(
                {metric_keys.dead_ratio_after_key(k): v for k, v in after.items()}, step=pos.step
            )
        summary = Summary(
            run_dir=str(self.run_dir),
            steps=pos.step,
            epochs=pos.epoch,
            tokens=pos.tokens_seen,
            val_loss=self.validator.last.get(metric_keys.VAL_LOSS, float("nan")),
            val_ppl=self.validator.last.get(metric_keys.VAL_PPL, float("nan")),
            stopped_by=stopped_by,
            dead_ratio=dead,
            dead_ratio_after_revival=after,
        )
        if self.is_main:
            summary.add_run_files(self.cfg.revival.method, report=self.cfg.train.report)
        return summary

    def _measure_final(self) -> LivenessReport | None:
        """The summary's numbers are those of the weights in final/: measured again (and logged, with
        liveness/final.json) when the last measurement is older than them (a run ended by train.max_steps or an
        alert, or a revival at the last step); else the last epoch end's. Returns the liveness report."""
        pos, report = self.pos, self.epoch_end.last_report
        revived_last = self.revival is not None and self.revival.last_step == pos.step
        if not self.validator.is_current(pos.step) or revived_last:
            val, fresh = self.measure(self.cfg.train.eval_batches)
            self.validator.record(val, pos.step)
            report = fresh or report
            final = {**val, **(fresh.metrics() if fresh is not None else {})}
            self.tracking.log(final, step=pos.step)
        if report is not None and self.is_main:
            write_json(self.run_dir / "liveness" / "final.json", report.to_json())
        return report


def release(accelerator) -> None:
    """Drop the prepared (DDP-wrapped) model and optimizer before the process group goes: a DDP model still
    alive at teardown made 2-process CPU runs hang at exit now and then."""
    import gc

    accelerator.free_memory()
    gc.collect()


def train(cfg: Config, keep_process_group: bool = False) -> Summary:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(cfg, keep_process_group=keep_process_group).run()
