"""The training loop: one canonical Accelerate loop that wires the parts together.

The parts (data, model, liveness monitor, alerts, reviver, tracking, checkpoints) do not know about each
other; this module builds them from their config sections and calls them at the right moments:

- `train_step`, every micro-batch: forward/backward inside `accelerator.accumulate`; on the step's last one
  (`sync_gradients`) the non-finite check, clip, optimizer step, revival masks, step counter;
- `_after_step`, once per optimizer step, asks each part whether its moment has come, in a fixed order:
  activation histograms (the monitor's `histogram_every`), the train log with the liveness window and alerts
  (`TrainWindow`, `log_every`), validation (`Validator`, `eval_every`), revival (`RevivalTiming`,
  `every_steps`), the periodic checkpoint (`Checkpointer`, `checkpoint_every`);
- `_complete_epoch`: validation pass with a fresh liveness window, liveness json, plots, revival, checkpoint.

Hooks for scripts (scripts/bench.py): `before_epoch_end` and `after_train_log`, lists of callables given the
trainer.

The position in training is (step, epoch, batches_in_epoch), saved in every checkpoint. An epoch has ended
only when its epoch end (measurement, liveness json, revival) has run and `epoch` has moved on: a checkpoint
taken after an epoch's last batch but before its end (a periodic one, or `train.max_steps` on that batch)
resumes into that epoch end, and one taken mid-epoch resumes into the rest of that epoch's data.

The contract: docs/design.md, "Training loop", "Resuming".
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader

from reviveformer import activations, metric_keys, plots
from reviveformer import checkpoint as ckpt
from reviveformer import report as run_report
from reviveformer.alerts import AlertManager, JsonlAlertSink, RateLimitedSink, console_sink, titled_alert_sink
from reviveformer.config import Config, check_training_config, save_config, to_dict
from reviveformer.data import load_tokenizer, prepare_data
from reviveformer.errors import CheckpointError, TrainingHalted, UserError
from reviveformer.evaluation import evaluate, measure, reduce_sum, val_loader
from reviveformer.faults import fault_point
from reviveformer.liveness import LivenessCounts, LivenessMonitor, LivenessReport, capacity
from reviveformer.loop import Checkpointer, RevivalTiming, TrainWindow, Validator
from reviveformer.memory import check_fits
from reviveformer.model import (
    DEFAULT_ACTIVATION,
    build_model,
    describe,
    init_from_checkpoint,
    model_summary,
    save_final,
)
from reviveformer.resume import compare_settings
from reviveformer.revival import arm_of_method, build_reviver, check_supported
from reviveformer.sites import MLP_SITE
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")


@dataclass
class Summary:
    """What a finished run reports (also the return value of `train`)."""

    run_dir: str
    steps: int = 0
    epochs: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    val_loss: float = float("nan")
    val_ppl: float = float("nan")
    stopped_by: str | None = None
    dead_ratio: dict[str, float] = field(default_factory=dict)
    revival: str | None = None
    """The revival totals line (report.revival_totals_line), None when nothing was revived."""
    revival_step: int = 0
    dead_ratio_before_revival: dict[str, float] = field(default_factory=dict)
    """Per site, the dead ratio the last revival decided from."""
    dead_ratio_after_revival: dict[str, float] = field(default_factory=dict)
    """Per site, measured at the end of the run, after the last revival."""
    report: str | None = None

    def lines(self) -> list[str]:
        out = [
            f"run directory: {self.run_dir}",
            f"steps: {self.steps}  epochs: {self.epochs}  tokens: {self.tokens:,}  wall: {self.wall_s:.1f}s  "
            f"tokens/s: {self.tokens_per_s:,.0f}",
            f"validation loss: {self.val_loss:.4f}  perplexity: {self.val_ppl:.2f}",
        ]

        def ratios(d: dict[str, float]) -> str:
            return "  ".join(f"{k} {v:.3f}" for k, v in d.items())

        if self.revival:
            out.append(self.revival)
            out.append(
                f"dead ratio before the last revival (step {self.revival_step}): "
                f"{ratios(self.dead_ratio_before_revival)}"
            )
            if self.dead_ratio_after_revival:
                after = ratios(self.dead_ratio_after_revival)
                out.append(f"dead ratio after it (measured at the end): {after}")
        elif self.dead_ratio:
            out.append("dead ratio: " + ratios(self.dead_ratio))
        if self.stopped_by:
            out.append(f"stopped early: {self.stopped_by}")
        out.append(f"final model: {Path(self.run_dir) / 'final'}")
        if self.report:
            out.append(f"report: {self.report}")
        return out


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at `total` steps."""

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (GPT-2 convention: not on biases, norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_output_dir(path: Path) -> None:
    """Fail before training when the run directory cannot be written (unwritable, a file in the way, a nearly
    full disk), without creating anything: a run that fails later must not leave a half-made directory."""
    if path.exists() and not path.is_dir():
        raise UserError(f"train.output_dir={path} is a file; give a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"train.output_dir={path} is not writable ({existing} does not allow writing); choose "
            "another directory"
        )
    free = shutil.disk_usage(existing).free
    if free < 50 * 2**20:
        raise UserError(f"train.output_dir={path} has only {free // 2**20} MiB free; checkpoints need more")


def reaches_multiple(step: int, span: int, every: int) -> bool:
    """Whether the `span` steps ending at `step` reach a multiple of `every` (0: never): the train log at which
    a lower cadence (`liveness.frequency_histogram_every`) falls due, whatever `train.log_every` is."""
    return every > 0 and step // every > (step - span) // every


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
        self.before_epoch_end: list[Callable[[Trainer], None]] = []
        """Called at each epoch end before its validation pass (e.g. to read the training's peak memory)."""
        self.after_train_log: list[Callable[[Trainer], None]] = []
        """Called after each train log, its liveness window included (e.g. to time windows of steps)."""
        if not self.is_main:
            log.setLevel(logging.ERROR)  # console logging on the main process only

    # ---------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        check_training_config(cfg)  # cross-section checks (a Config built in code skips load_config's)
        check_fits(cfg)  # weights + optimizer state against free memory, before any data is prepared
        resume_from = self._resume_path()
        check_output_dir(self.run_dir)  # on every process: an error raised on one alone would hang the others
        if self.cfg.train.resume == "never" and (self.run_dir / "config.yaml").is_file():
            raise UserError(
                f"train.output_dir={self.run_dir} already holds a run; continue it with "
                "train.resume=auto, or give another train.output_dir (nothing was changed)"
            )
        activations.validate_activation(
            cfg.model.activation or DEFAULT_ACTIVATION, cfg.model.leaky_relu_slope
        )
        acc.wait_for_everyone()
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.train.seed)

        init_model = None
        tokenizer = None
        if cfg.model.init_from:
            init_model = init_from_checkpoint(cfg.model)
            if cfg.data.tokenizer == "bpe":  # the checkpoint's own (a folder without one is refused at load)
                # fine-tuning keeps the checkpoint's own vocabulary
                tokenizer = load_tokenizer(cfg.model.init_from)
        with acc.main_process_first():
            self.data = prepare_data(cfg.data, cfg.train.seed, tokenizer=tokenizer)
        tok = self.data.tokenizer
        if init_model is not None:
            model = init_model
            if len(tok) > model.config.vocab_size:
                raise CheckpointError(
                    f"vocabulary mismatch: the tokenizer has {len(tok)} tokens but model.init_from={cfg.model.init_from} "
                    f"embeds {model.config.vocab_size}; use the checkpoint's own tokenizer (data.tokenizer=bpe picks it "
                    "when the checkpoint folder has one) or data.tokenizer=PATH of a matching one"
                )
            if cfg.data.block_size > model.config.n_positions:
                raise CheckpointError(
                    f"data.block_size={cfg.data.block_size} is above the checkpoint's n_positions="
                    f"{model.config.n_positions}; lower data.block_size"
                )
            resolved = describe(model)  # the run's config records what was actually loaded
            resolved.init_from = cfg.model.init_from
            cfg.model = resolved
        else:
            model = build_model(cfg.model, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
            cfg.model.activation = describe(model).activation
        log.info("%s", model_summary(model))
        # everything that can refuse a resume runs before the first write (config.yaml, W&B, folders)
        saved = self._check_resume(resume_from) if resume_from is not None else None

        self.monitor = LivenessMonitor(model, cfg.liveness) if cfg.liveness.enabled else None
        self.reviver = build_reviver(cfg.revival, seed=cfg.train.seed)
        if self.reviver is not None:
            check_supported(str(acc.distributed_type))

        # Its own generator: creating an iterator must not draw from the global RNG that dropout uses, or a
        # resumed run (which creates its iterator after restoring that RNG) would drift from a straight one.
        train_loader = DataLoader(
            self.data.train,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        if len(train_loader) == 0:
            raise UserError(
                f"train.batch_size={cfg.train.batch_size} is larger than the {len(self.data.train)} "
                "training blocks; lower train.batch_size or add data"
            )
        optimizer = torch.optim.AdamW(
            param_groups(model, cfg.train.weight_decay),
            lr=cfg.train.lr,
            betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
            eps=cfg.train.adam_eps,
        )
        model, optimizer, self.train_loader = acc.prepare(model, optimizer, train_loader)
        self.val_loader = val_loader(acc, self.data.val, cfg.train.batch_size)
        self.model, self.optimizer = model, optimizer
        self.batches_per_epoch = len(self.train_loader)  # micro-batches of one process
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.train.grad_accum)
        self.total_steps = 0  # set below, once the position is known; the schedule reads it at each step
        tc = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            lambda s: warmup_cosine(tc.warmup_steps, self.total_steps, tc.min_lr_ratio)(s),
        )
        self.scheduler = acc.prepare(self.scheduler)
        self.checkpointer = Checkpointer(
            acc,
            self.run_dir / "checkpoints",
            tc.checkpoint_every,
            tc.checkpoint_limit,
            model,
            state=self._state,
        )
        self.validator = Validator(
            tc.eval_every,
            evaluate=lambda: self.evaluate(tc.eval_batches),
            log=lambda val, step: self.tracking.log(val, step=step),
        )
        self.revival_timing = RevivalTiming(self.reviver is not None, cfg.revival.every_steps)

        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.bad_steps = 0
        self.tokens_seen = 0
        self.step_budget = cfg.train.max_steps
        self.last_report: LivenessReport | None = None
        self.revived_this_session = False
        if saved is not None:
            self._restore(resume_from, saved)
        self.total_steps = self._total_steps()

        self.job_type = self.cfg.wandb.job_type or arm_of_method(cfg.revival.method)
        if self.is_main:
            for sub in ("liveness", "plots", "checkpoints"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.tracking = Tracking(acc, cfg.wandb, self.run_dir, to_dict(cfg), self.job_type)
        sinks = []
        if self.is_main:
            sinks = [
                console_sink,
                JsonlAlertSink(self.run_dir / "alerts.jsonl"),
                RateLimitedSink(titled_alert_sink(self.tracking.alert), cfg.alerts.wandb_wait_s),
            ]
        self.alerts = AlertManager(cfg.alerts, sinks=sinks)
        if saved is not None:
            self.alerts.load_state_dict(saved["alerts"])

    def _resume_path(self) -> Path | None:
        r = self.cfg.train.resume
        if r == "never":
            return None
        if r == "auto":
            found = ckpt.find_resume_point(self.run_dir / "checkpoints")
            if found is None:
                log.info("train.resume=auto: no complete checkpoint in %s; starting fresh", self.run_dir)
            return found
        p = Path(r)
        if not (p / ckpt.MARKER).is_file():
            raise CheckpointError(
                f"train.resume={r} is not a complete reviveformer checkpoint (no {ckpt.MARKER} "
                "marker); give never, auto, or a checkpoints/step_XXXXXXXX directory"
            )
        return p

    # ---------------------------------------------------------------- state
    def _state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "num_processes": self.accelerator.num_processes,
            "step_budget": self.step_budget,
            "bad_steps": self.bad_steps,
            "tokens_seen": self.tokens_seen,
            "config": to_dict(self.cfg),
            "monitor": self._monitor_state(),
            "reviver": self.reviver.state_dict() if self.reviver else None,
            "alerts": self.alerts.state_dict(),
        }

    def _monitor_state(self) -> dict | None:
        """The training window's counts summed over processes (the main process alone writes the state)."""
        if self.monitor is None:
            return None
        state = self.monitor.state_dict()
        if self.accelerator.num_processes > 1:
            dev = self.accelerator.device
            for counts in state["sites"].values():
                for k, t in counts.items():
                    counts[k] = self._reduce_sum(t.to(dev)).cpu()
        return state

    def _check_resume(self, path: Path) -> dict:
        """Read the checkpoint's state and refuse a resume it cannot honour, before anything is written;
        announce what it may change in one warning. Returns the state."""
        state = ckpt.read_state(path)
        saved_cfg = state.get("config")
        if saved_cfg is None:  # a checkpoint from before configs were saved in it: the run's config.yaml
            import yaml

            legacy = path.parent.parent / "config.yaml"
            saved_cfg = yaml.safe_load(legacy.read_text()) if legacy.is_file() else to_dict(self.cfg)
        changes = compare_settings(saved_cfg, to_dict(self.cfg), str(path))
        saved_np = state.get("num_processes", 1)
        if saved_np != self.accelerator.num_processes:
            changes.append(
                f"processes: {saved_np} -> {self.accelerator.num_processes} (the data position, step "
                "count, liveness and revival state carry over; the random streams cannot, so the result "
                "will not be bit-identical to an uninterrupted run)"
            )
        if changes:
            log.warning(
                "resuming from %s with changed settings, in effect from step %d on: %s",
                path,
                state["step"],
                "; ".join(changes),
            )
        return state

    def _restore(self, path: Path, state: dict) -> None:
        acc = self.accelerator
        ckpt.load_checkpoint(acc, path)
        self.step, self.epoch = state["step"], state["epoch"]
        self.bad_steps, self.tokens_seen = state["bad_steps"], state["tokens_seen"]
        saved_np = state.get("num_processes", 1)
        saved_per_epoch = state.get("batches_per_epoch", self.batches_per_epoch)
        if state["batches_in_epoch"] >= saved_per_epoch:  # the epoch's data is done, its end is not
            self.batches_in_epoch = self.batches_per_epoch
        else:  # the data position in global batches, dealt again over this run's processes, on a step boundary
            global_batches = state["batches_in_epoch"] * saved_np
            ga = self.cfg.train.grad_accum
            self.batches_in_epoch = global_batches // acc.num_processes // ga * ga
            if self.batches_in_epoch * acc.num_processes != global_batches:
                log.warning(
                    "the %d batches of this epoch already trained do not deal evenly over %d processes: "
                    "resuming after %d of them (%d seen again)",
                    global_batches,
                    acc.num_processes,
                    self.batches_in_epoch * acc.num_processes,
                    global_batches - self.batches_in_epoch * acc.num_processes,
                )
        self.step_budget = self.cfg.train.max_steps
        saved_max = state.get("config", {}).get("train", {}).get("max_steps", self.cfg.train.max_steps)
        budget = state.get("step_budget", saved_max)
        if budget is not None and saved_max == self.cfg.train.max_steps and saved_np != acc.num_processes:
            # the same tokens in all: the steps left shrink or grow with the samples each step takes
            self.step_budget = self.step + math.ceil((budget - self.step) * saved_np / acc.num_processes)
        elif budget is not None and saved_max == self.cfg.train.max_steps:
            self.step_budget = budget
        if self.monitor and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
            if not self.is_main:  # the saved counts are the sum over processes: count them once
                self.monitor.reset()
        if self.reviver and state.get("reviver") is not None:
            self.reviver.load_state_dict(state["reviver"])
        self.checkpointer.mark_saved(self.step)  # that checkpoint holds this position already
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d)",
            path,
            self.step,
            self.epoch,
            self.batches_in_epoch,
        )

    def _total_steps(self) -> int:
        """The step at which training ends: the end of the last epoch, or the step budget (train.max_steps)."""
        tc = self.cfg.train
        if self.epoch >= tc.epochs:
            to_end = self.step
        else:
            left = math.ceil((self.batches_per_epoch - self.batches_in_epoch) / tc.grad_accum)
            to_end = self.step + left + self.steps_per_epoch * (tc.epochs - self.epoch - 1)
        return to_end if self.step_budget is None else min(self.step_budget, to_end)

    # ---------------------------------------------------------------- measurement
    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return reduce_sum(self.accelerator, t)

    def liveness_report(self) -> LivenessReport | None:
        if self.monitor is None:
            return None
        masks = self.reviver.pruned_masks() if self.reviver else None
        return self.monitor.report(reduce=self._reduce_sum, pruned_masks=masks)

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Validation loss only; the monitor is paused so the training window holds training tokens alone."""
        if self.monitor is None:
            return evaluate(self.model, self.val_loader, self.accelerator, max_batches)
        with self.monitor.paused():
            return evaluate(self.model, self.val_loader, self.accelerator, max_batches)

    def measure(self, max_batches: int | None = None) -> tuple[dict[str, float], LivenessReport | None]:
        masks = self.reviver.pruned_masks() if self.reviver else None
        return measure(self.model, self.val_loader, self.accelerator, self.monitor, masks, max_batches)

    # ---------------------------------------------------------------- revival
    def revive(self, report: LivenessReport | None = None) -> dict[str, float]:
        """One revival pass (measured on the validation split unless a fresh report is given)."""
        if self.reviver is None:
            return {}
        if report is None:
            _, report = self.measure(self.cfg.train.eval_batches)
        if report.tokens == 0:  # every unit would count as dead: nothing to decide from
            log.warning("revival skipped at step %d: the liveness measurement saw no tokens", self.step)
            return {}
        unwrapped = self.accelerator.unwrap_model(self.model)
        t0 = time.perf_counter()
        metrics = self.reviver.revive(unwrapped, report, self.optimizer)
        metrics["revival/seconds"] = time.perf_counter() - t0
        metrics.update(
            {metric_keys.dead_ratio_before_key(k): v for k, v in self._dead_ratios(report).items()}
        )
        # capacity after revival: newly pruned weights no longer count as effective
        cap = capacity(unwrapped, report.dead_units(MLP_SITE), self.reviver.pruned_masks())
        metrics.update({metric_keys.capacity_key(k): float(v) for k, v in cap.items()})
        self.tracking.log(metrics, step=self.step)
        self.revived_this_session = True
        # batches_in_epoch is reset when an epoch ends, before its epoch-end work
        when = (
            f"end of epoch {self.epoch}" if self.batches_in_epoch == 0 else f"during epoch {self.epoch + 1}"
        )
        log.info("%s", run_report.revival_event(metrics, self.step, self.cfg.revival.method).line(when))
        details = self.reviver.last_layer_details()
        if details and self.is_main:
            cols = list(details[0].keys())
            self.tracking.log_table(
                "revival/per_layer", cols, [[d[c] for c in cols] for d in details], self.step
            )
            try:
                fig = plots.plot_revived_per_layer(details, self.run_dir / "plots" / "revival_per_layer.png")
                self.tracking.log_images({metric_keys.plot_key("revival_per_layer"): fig}, step=self.step)
            except Exception as e:  # a figure must never stop training
                log.warning("plotting failed: %s: %s", type(e).__name__, e)
        return metrics

    # ---------------------------------------------------------------- logging
    def _log_liveness(
        self, window: LivenessReport | LivenessCounts, when: str, histograms: bool = True
    ) -> set[str]:
        metrics = window.metrics()
        outcome = self.alerts.check(metrics, step=self.step, when=when)
        metrics.update(outcome.metrics)
        self.tracking.log(metrics, step=self.step)
        if histograms and self.is_main and self.tracking.wandb_run is not None:
            freqs = {
                metric_keys.layer_key(site, i, "frequency"): f
                for site, layers in window.frequencies().items()
                for i, f in enumerate(layers)
            }
            self.tracking.log_histograms(freqs, self.step)
        return set(outcome.actions)

    def _act_on_alerts(self, actions: set[str]) -> str | None:
        if "revive" in actions and self.reviver is not None:
            log.warning("alert action: reviving now (step %d)", self.step)
            self.revive()
        if "stop" in actions:
            return "alert action stop"
        return None

    def _epoch_end(self, epoch: int) -> str | None:
        epoch_seconds = time.perf_counter() - self._epoch_t0  # training time of the epoch, before its eval
        for hook in self.before_epoch_end:
            hook(self)
        if self.monitor is not None:
            self.monitor.request_histogram()  # activation values of the first validation batch
        val, report = self.measure(self.cfg.train.eval_batches)
        fault_point("epoch_end_measure")
        hists = self.monitor.histograms() if self.monitor is not None else {}
        self._log_histograms(hists)
        self.validator.record(val, self.step)
        self.tracking.log(
            {**val, metric_keys.EPOCH: epoch, metric_keys.TRAIN_EPOCH_SECONDS: epoch_seconds}, step=self.step
        )
        actions: set[str] = set()
        if report is not None:
            self.last_report = report
            actions = self._log_liveness(report, when="epoch_end")
            if self.is_main:
                data = report.to_json()
                path = self.run_dir / "liveness" / f"epoch_{epoch:03d}.json"
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(data))
                tmp.rename(path)
                self._save_histograms(epoch, hists)
                self._plots(data, hists)
        if self.revival_timing.at_epoch_end:
            self.revive(report)
        # the epoch end's own revival has just run: an alert's `revive` would only repeat it
        return self._act_on_alerts(actions - (set() if self.revival_timing.on_steps else {"revive"}))

    def _save_histograms(self, epoch: int, hists: dict) -> None:
        """liveness/activations_epoch_NNN.json: the epoch-end histograms, for the report page."""
        if hists:
            path = self.run_dir / "liveness" / f"activations_epoch_{epoch:03d}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(run_report.histograms_json(hists)))
            tmp.rename(path)

    def _log_histograms(self, hists: dict) -> None:
        if hists:
            self.tracking.log_histograms(
                {
                    metric_keys.layer_key(site, layer, metric_keys.ACTIVATIONS): v
                    for (site, layer), v in hists.items()
                },
                self.step,
            )

    def _plots(self, liveness: dict, hists: dict) -> None:
        pdir = self.run_dir / "plots"
        try:
            images = {
                metric_keys.plot_key("frequency_heatmap"): plots.plot_frequency_heatmap(
                    liveness, pdir / "frequency_heatmap.png"
                ),
                metric_keys.plot_key("dead_ratio_per_layer"): plots.plot_dead_ratio_per_layer(
                    liveness, pdir / "dead_ratio_per_layer.png"
                ),
                metric_keys.plot_key("dead_ratio_over_training"): plots.plot_dead_ratio_over_training(
                    self.run_dir / "metrics.jsonl", pdir / "dead_ratio_over_training.png"
                ),
            }
            if hists:
                images[metric_keys.plot_key("activation_histograms")] = plots.plot_activation_histograms(
                    hists, pdir / "activation_histograms.png"
                )
        except Exception as e:  # a figure must never stop training
            log.warning("plotting failed: %s: %s", type(e).__name__, e)
            return
        self.tracking.log_images(images, step=self.step)

    # ---------------------------------------------------------------- the loop
    def run(self) -> Summary:
        t0 = time.perf_counter()
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            self._setup()
            # console lines (alerts, revivals) are printed above the progress bar, not into its line
            with logging_redirect_tqdm():
                summary = self._loop()
        finally:
            if hasattr(self, "tracking"):
                self.tracking.finish()
            if self.monitor is not None:
                self.monitor.close()
            for attr in ("model", "optimizer", "scheduler", "train_loader", "val_loader", "checkpointer"):
                self.__dict__.pop(attr, None)
            release(self.accelerator)
            if not self.keep_process_group:
                self.accelerator.end_training()
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _loop(self) -> Summary:
        tc, acc = self.cfg.train, self.accelerator
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (self.is_main and tc.progress),
            desc="training",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 30.0,
        )  # a log file gets a line every 30 s
        self.window = TrainWindow(tc.log_every, acc.device)
        self._epoch_t0 = self.window.started
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._tokens_per_step = tc.batch_size * self.cfg.data.block_size * tc.grad_accum * acc.num_processes
        stopped_by = None
        self.model.train()
        while stopped_by is None and self.epoch < tc.epochs:
            if self.batches_in_epoch < self.batches_per_epoch:
                if self.step < self.total_steps:
                    stopped_by = self._train_epoch()
                if self.batches_in_epoch < self.batches_per_epoch:
                    # left mid-epoch (the step budget or an alert's stop): the epoch has not ended, and a
                    # checkpoint keeps the position within it for a later resume
                    self.checkpointer.save_unless_saved(self.step)
                    break
            # the epoch's data is done (now, or before the checkpoint this run resumed from): its end
            stopped_by = self._complete_epoch() or stopped_by
        self._bar.close()
        return self._finish(stopped_by)

    def _train_epoch(self) -> str | None:
        """Train on the rest of the current epoch's data; return early at the step budget or an alert's stop
        (its reason). Leaves `batches_in_epoch` at `batches_per_epoch` when the data ran out."""
        self.train_loader.set_epoch(self.epoch)
        loader = self.train_loader
        if self.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, self.batches_in_epoch)
        self._step_loss = torch.zeros((), device=self.accelerator.device)
        for batch in loader:
            grad_norm = self.train_step(batch)
            if grad_norm is None:  # accumulating, or a non-finite step skipped
                continue
            stopped_by = self._after_step(grad_norm)
            if stopped_by or self.step >= self.total_steps:
                return stopped_by
        return None

    def train_step(self, batch: dict) -> torch.Tensor | None:
        """One micro-batch: forward and backward; on the step's last micro-batch the optimizer step and the step
        counter. Returns the step's gradient norm once an optimizer step is taken; None while accumulating or
        when a non-finite step was skipped."""
        tc, acc = self.cfg.train, self.accelerator
        model, optimizer = self.model, self.optimizer
        if self.monitor is not None:
            self.monitor.begin_step(self.step + 1)  # its own sampling and histogram cadence
        with acc.accumulate(model):
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            self._step_loss += loss.detach() / tc.grad_accum
            acc.backward(loss)
            self.batches_in_epoch += 1
            if not acc.sync_gradients:
                return None
            fault_point("mid_step")
            max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = acc.clip_grad_norm_(self._params, max_norm)
            mean_loss = acc.reduce(self._step_loss, "mean") if acc.num_processes > 1 else self._step_loss
            finite = torch.isfinite(mean_loss)
            # a gradient scaler skips an inf-gradient step by itself; without one (fp16 on CPU, bf16, fp32) the
            # gradient norm must be finite
            if acc.scaler is None:
                finite = finite & torch.isfinite(grad_norm)
            if not bool(finite):  # the one host sync per optimizer step: a NaN must never reach the weights
                msg = (
                    f"non-finite loss or gradient at step {self.step + 1} (loss {mean_loss.item():.4g}, "
                    f"grad norm {float(grad_norm):.4g}); the optimizer update was skipped"
                )
                optimizer.zero_grad(set_to_none=True)
                self._step_loss.zero_()
                self.bad_steps += 1
                if self.bad_steps > tc.max_bad_steps:
                    raise TrainingHalted(
                        msg + f". Stopping: {self.bad_steps} such step(s), train.max_bad_steps="
                        f"{tc.max_bad_steps}; the last good checkpoint is kept in "
                        f"{self.run_dir / 'checkpoints'}"
                    )
                log.warning("%s (%d of train.max_bad_steps=%d)", msg, self.bad_steps, tc.max_bad_steps)
                return None
            if self.reviver is not None:  # GraMa reads the step's gradients here (clipped, finite)
                self.reviver.before_optimizer_step(acc.unwrap_model(model))
            optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.reviver is not None:
            self.reviver.after_optimizer_step(acc.unwrap_model(model))
        self.window.add(mean_loss, self._tokens_per_step)
        self._step_loss = torch.zeros((), device=acc.device)
        self.tokens_seen += self._tokens_per_step
        self._bar.update(1)
        return grad_norm

    def _after_step(self, grad_norm: torch.Tensor) -> str | None:
        """Step-level work, once per optimizer step: each part at its own cadence, in this order. Returns an
        alert's stop reason, if any."""
        stopped_by = None
        if self.monitor is not None and self.monitor.histogram_due(self.step):
            self._log_histograms(self.monitor.histograms())
        if self.window.due(self.step):
            window_loss, window_steps, tokens_per_s = self.window.take()
            actions = self._log_train(window_loss, window_steps, tokens_per_s, grad_norm)
            self._bar.set_postfix(loss=f"{window_loss.item() / max(window_steps, 1):.3f}")
            stopped_by = self._act_on_alerts(actions)
        if self.validator.should_validate(self.step):
            self.validator.validate(self.step)
        if self.revival_timing.due_after_step(self.step):
            self.revive()
        self.checkpointer.after_step(self.step)
        return stopped_by

    def _complete_epoch(self) -> str | None:
        """The end of the epoch whose data is done: the epoch counter moves on, then its measurement, liveness
        json, plots and revival (`_epoch_end`), then a checkpoint. Returns an alert's stop reason, if any."""
        epoch = self.epoch
        self.epoch += 1
        self.batches_in_epoch = 0
        stopped_by = self._epoch_end(epoch)
        fault_point("after_revival")
        self.checkpointer.save(self.step)
        self._epoch_t0 = time.perf_counter()
        return stopped_by

    def _log_train(self, window_loss, window_steps, tokens_per_s, grad_norm) -> set[str]:
        metrics = {
            "train/loss": window_loss.item() / max(window_steps, 1),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/tokens_per_s": tokens_per_s,
            "train/epoch": self.epoch,
        }
        self.tracking.log(metrics, step=self.step)
        actions: set[str] = set()
        if self.monitor is not None:
            # arrays, not the per-unit report: that is built only where it is written (epoch end)
            masks = self.reviver.pruned_masks() if self.reviver else None
            counts = self.monitor.counts(reduce=self._reduce_sum, pruned_masks=masks)
            self.monitor.reset()
            if counts.max_tokens > 0:  # a window with no counted tokens (liveness.sample_every) says nothing
                due = reaches_multiple(
                    self.step, self.cfg.train.log_every, self.cfg.liveness.frequency_histogram_every
                )
                actions = self._log_liveness(counts, when="train", histograms=due)
        for hook in self.after_train_log:
            hook(self)
        return actions

    def _finish(self, stopped_by: str | None) -> Summary:
        acc = self.accelerator
        if not self.validator.is_current(self.step):  # the summary's numbers are those of the final weights
            val, report = self.measure(self.cfg.train.eval_batches)
            self.validator.record(val, self.step)
            self.last_report = report or self.last_report
        ckpt.check_finite_weights(self.model, "final/")
        acc.wait_for_everyone()
        if self.is_main:
            tmp = self.run_dir / ".final-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_final(acc.unwrap_model(self.model), self.data.tokenizer, self.cfg, tmp)
            fault_point("final_write")
            final = self.run_dir / "final"
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        acc.wait_for_everyone()
        dead = {}
        if self.last_report is not None:
            dead = self._dead_ratios(self.last_report)
        after = {}
        if self.revived_this_session:
            # the last revival changed the model after the measurement it decided from: measure once more
            _, report = self.measure(self.cfg.train.eval_batches)
            after = self._dead_ratios(report)
            self.tracking.log(
                {metric_keys.dead_ratio_after_key(k): v for k, v in after.items()}, step=self.step
            )
        summary = Summary(
            run_dir=str(self.run_dir),
            steps=self.step,
            epochs=self.epoch,
            tokens=self.tokens_seen,
            val_loss=self.validator.last.get(metric_keys.VAL_LOSS, float("nan")),
            val_ppl=self.validator.last.get(metric_keys.VAL_PPL, float("nan")),
            stopped_by=stopped_by,
            dead_ratio=dead,
            dead_ratio_after_revival=after,
        )
        if self.is_main and (self.run_dir / "metrics.jsonl").is_file():
            rows = plots.read_metrics(self.run_dir / "metrics.jsonl")
            rates = [r[metric_keys.TRAIN_TOKENS_PER_S] for r in rows if metric_keys.TRAIN_TOKENS_PER_S in r]
            summary.tokens_per_s = sorted(rates)[len(rates) // 2] if rates else 0.0
            events = run_report.revival_events(
                rows, self.cfg.revival.method
            )  # all of the run's revivals, a resumed run's included
            if events:
                summary.revival = run_report.revival_totals_line(events)
                summary.revival_step = events[-1].step
                last = [
                    r for r in rows if r.get("step") == events[-1].step and metric_keys.REVIVAL_COUNT in r
                ][-1]
                summary.dead_ratio_before_revival = {
                    site: v for k, v in last.items() if (site := metric_keys.parse_dead_ratio_before_key(k))
                }
            try:
                summary.report = str(run_report.write_run_report(self.run_dir))
            except Exception as e:  # the report must never fail a finished run
                log.warning("report.html not written: %s: %s", type(e).__name__, e)
        return summary

    def _dead_ratios(self, report: LivenessReport) -> dict[str, float]:
        m = report.metrics()
        return {
            site: m[metric_keys.dead_ratio_key(site)]
            for site in self.cfg.liveness.sites
            if metric_keys.dead_ratio_key(site) in m
        }


def release(accelerator) -> None:
    """Drop the prepared (DDP-wrapped) model and optimizer before the process group goes: a DDP model still
    alive at teardown made 2-process CPU runs hang at exit now and then."""
    import gc

    accelerator.free_memory()
    gc.collect()


def train(cfg: Config, keep_process_group: bool = False) -> Summary:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(cfg, keep_process_group=keep_process_group).run()
