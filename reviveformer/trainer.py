"""The training loop: one canonical Accelerate loop that wires the parts together.

The parts (data, model, liveness monitor, alerts, reviver, tracking, checkpoints) do not know about each
other; this module builds them from their config sections and calls them at the right moments:

- every micro-batch: forward/backward inside `accelerator.accumulate`;
- every optimizer step (`sync_gradients`): non-finite check, clip, step, revival masks, step counter;
- every `log_every` steps: train metrics and the liveness window (then reset), alerts;
- at each epoch end: validation pass with a fresh liveness window, liveness json, plots, revival, checkpoint.
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

from reviveformer import activations, plots
from reviveformer import checkpoint as ckpt
from reviveformer.alerts import AlertManager, JsonlAlertSink, RateLimitedSink, console_sink, titled_alert_sink
from reviveformer.config import Config, save_config, to_dict
from reviveformer.data import load_tokenizer, prepare_data
from reviveformer.errors import CheckpointError, TrainingHalted, UserError
from reviveformer.evaluation import evaluate, measure, reduce_sum, val_loader
from reviveformer.liveness import LivenessCounts, LivenessMonitor, LivenessReport, capacity
from reviveformer.model import (
    DEFAULT_ACTIVATION,
    build_model,
    describe,
    init_from_checkpoint,
    model_summary,
    save_final,
)
from reviveformer.revival import build_reviver, check_supported
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")

JOB_TYPES = {"none": "baseline", "synaptic_stripping": "stripping", "redo": "redo"}


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

    def lines(self) -> list[str]:
        out = [
            f"run directory: {self.run_dir}",
            f"steps: {self.steps}  epochs: {self.epochs}  tokens: {self.tokens:,}  wall: {self.wall_s:.1f}s  "
            f"tokens/s: {self.tokens_per_s:,.0f}",
            f"validation loss: {self.val_loss:.4f}  perplexity: {self.val_ppl:.2f}",
        ]
        if self.dead_ratio:
            out.append("dead ratio: " + "  ".join(f"{k} {v:.3f}" for k, v in self.dead_ratio.items()))
        if self.stopped_by:
            out.append(f"stopped early: {self.stopped_by}")
        out.append(f"final model: {Path(self.run_dir) / 'final'}")
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
        raise UserError(f"train.output_dir={path} is not writable ({existing} does not allow writing); choose "
                        "another directory")
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
        resume_from = self._resume_path()
        check_output_dir(self.run_dir)  # on every process: an error raised on one alone would hang the others
        if self.cfg.train.resume == "never" and (self.run_dir / "config.yaml").is_file():
            raise UserError(f"train.output_dir={self.run_dir} already holds a run; continue it with "
                            "train.resume=auto, or give another train.output_dir (nothing was changed)")
        activations.validate_activation(cfg.model.activation or DEFAULT_ACTIVATION, cfg.model.leaky_relu_slope)
        acc.wait_for_everyone()
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        set_seed(cfg.train.seed)

        init_model = None
        tokenizer = None
        if cfg.model.init_from:
            init_model = init_from_checkpoint(cfg.model)
            if cfg.data.tokenizer == "bpe" and (Path(cfg.model.init_from) / "tokenizer.json").is_file():
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
                    "when the checkpoint folder has one) or data.tokenizer=PATH of a matching one")
            if cfg.data.block_size > model.config.n_positions:
                raise CheckpointError(f"data.block_size={cfg.data.block_size} is above the checkpoint's n_positions="
                                      f"{model.config.n_positions}; lower data.block_size")
            resolved = describe(model)  # the run's config records what was actually loaded
            resolved.init_from = cfg.model.init_from
            cfg.model = resolved
        else:
            model = build_model(cfg.model, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
            cfg.model.activation = describe(model).activation
        log.info("%s", model_summary(model))

        self.monitor = LivenessMonitor(model, cfg.liveness) if cfg.liveness.enabled else None
        self.reviver = build_reviver(cfg.revival, seed=cfg.train.seed)
        if self.reviver is not None:
            check_supported(str(acc.distributed_type))
            if self.monitor is None:
                raise UserError("revival.method needs liveness.enabled=true (revival decides from liveness counts)")
            if "mlp_post" not in cfg.liveness.sites:
                raise UserError("revival.method needs 'mlp_post' in liveness.sites (the dead set is taken there)")

        # Its own generator: creating an iterator must not draw from the global RNG that dropout uses, or a
        # resumed run (which creates its iterator after restoring that RNG) would drift from a straight one.
        train_loader = DataLoader(self.data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                  generator=torch.Generator().manual_seed(cfg.train.seed))
        if len(train_loader) == 0:
            raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than the {len(self.data.train)} "
                            "training blocks; lower train.batch_size or add data")
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                      betas=(0.9, 0.95), eps=1e-8)
        model, optimizer, self.train_loader = acc.prepare(model, optimizer, train_loader)
        self.val_loader = val_loader(acc, self.data.val, cfg.train.batch_size)
        self.model, self.optimizer = model, optimizer
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or self.steps_per_epoch * cfg.train.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            warmup_cosine(cfg.train.warmup_steps, self.total_steps, cfg.train.min_lr_ratio))
        self.scheduler = acc.prepare(self.scheduler)

        self.job_type = self.cfg.wandb.job_type or JOB_TYPES[cfg.revival.method]
        if self.is_main:
            for sub in ("liveness", "plots", "checkpoints"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.tracking = Tracking(acc, cfg.wandb, self.run_dir, to_dict(cfg), self.job_type)
        sinks = []
        if self.is_main:
            sinks = [console_sink, JsonlAlertSink(self.run_dir / "alerts.jsonl"),
                     RateLimitedSink(titled_alert_sink(self.tracking.alert), cfg.alerts.wandb_wait_s)]
        self.alerts = AlertManager(cfg.alerts, sinks=sinks)

        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.bad_steps = 0
        self.tokens_seen = 0
        self.last_val: dict[str, float] = {}
        self.last_report: LivenessReport | None = None
        if resume_from is not None:
            self._restore(resume_from)

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
            raise CheckpointError(f"train.resume={r} is not a complete reviveformer checkpoint (no {ckpt.MARKER} "
                                  "marker); give never, auto, or a checkpoints/step_XXXXXXXX directory")
        return p

    # ---------------------------------------------------------------- state
    def _state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "bad_steps": self.bad_steps,
            "tokens_seen": self.tokens_seen,
            "monitor": self.monitor.state_dict() if self.monitor else None,
            "reviver": self.reviver.state_dict() if self.reviver else None,
            "alerts": self.alerts.state_dict(),
        }

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(self.accelerator, path)
        self.step, self.epoch = state["step"], state["epoch"]
        self.batches_in_epoch, self.bad_steps = state["batches_in_epoch"], state["bad_steps"]
        self.tokens_seen = state["tokens_seen"]
        if self.monitor and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
        if self.reviver and state.get("reviver") is not None:
            self.reviver.load_state_dict(state["reviver"])
        self.alerts.load_state_dict(state["alerts"])
        log.info("resumed from %s (step %d, epoch %d, batch %d)", path, self.step, self.epoch, self.batches_in_epoch)

    def save_checkpoint(self) -> Path:
        return ckpt.save_checkpoint(self.accelerator, self.run_dir / "checkpoints", self.step, self._state(),
                                    self.cfg.train.checkpoint_limit)

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
        was_active, self.monitor.active = self.monitor.active, False
        try:
            return evaluate(self.model, self.val_loader, self.accelerator, max_batches)
        finally:
            self.monitor.active = was_active

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
        metrics = self.reviver.revive(unwrapped, report.to_json(), self.optimizer)
        metrics["revival/seconds"] = time.perf_counter() - t0
        # capacity after revival: newly pruned weights no longer count as effective
        cap = capacity(unwrapped, report.dead_units("mlp_post"), self.reviver.pruned_masks())
        metrics.update({f"capacity/{k}": float(v) for k, v in cap.items()})
        self.tracking.log(metrics, step=self.step)
        details = self.reviver.last_layer_details()
        if details and self.is_main:
            cols = list(details[0].keys())
            self.tracking.log_table("revival/per_layer", cols, [[d[c] for c in cols] for d in details], self.step)
            try:
                fig = plots.plot_revived_per_layer(details, self.run_dir / "plots" / "revival_per_layer.png")
                self.tracking.log_images({"plots/revival_per_layer": fig}, step=self.step)
            except Exception as e:  # a figure must never stop training
                log.warning("plotting failed: %s: %s", type(e).__name__, e)
        return metrics

    # ---------------------------------------------------------------- logging
    def _log_liveness(self, window: LivenessReport | LivenessCounts, when: str, histograms: bool = True) -> set[str]:
        metrics = window.metrics()
        outcome = self.alerts.check(metrics, step=self.step, when=when)
        metrics.update(outcome.metrics)
        self.tracking.log(metrics, step=self.step)
        if histograms and self.is_main and self.tracking.wandb_run is not None:
            freqs = {f"liveness/{site}/layer_{i}/frequency": f
                     for site, layers in window.frequencies().items() for i, f in enumerate(layers)}
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
            self.monitor.histogram_next = True  # activation values of the first validation batch
        val, report = self.measure(self.cfg.train.eval_batches)
        hists = self.monitor.histograms() if self.monitor is not None else {}
        self._log_histograms(hists)
        self.last_val = val
        self.tracking.log({**val, "epoch": epoch, "train/epoch_seconds": epoch_seconds}, step=self.step)
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
                self._plots(data, hists)
        if self.reviver is not None and self.cfg.revival.every_steps == 0:
            self.revive(report)
        return self._act_on_alerts(actions - ({"revive"} if self.cfg.revival.every_steps == 0 else set()))

    def _log_histograms(self, hists: dict) -> None:
        if hists:
            self.tracking.log_histograms(
                {f"liveness/{site}/layer_{layer}/activations": v for (site, layer), v in hists.items()}, self.step)

    def _plots(self, liveness: dict, hists: dict) -> None:
        pdir = self.run_dir / "plots"
        try:
            images = {
                "plots/frequency_heatmap": plots.plot_frequency_heatmap(liveness, pdir / "frequency_heatmap.png"),
                "plots/dead_ratio_per_layer": plots.plot_dead_ratio_per_layer(liveness, pdir / "dead_ratio_per_layer.png"),
                "plots/dead_ratio_over_training": plots.plot_dead_ratio_over_training(
                    self.run_dir / "metrics.jsonl", pdir / "dead_ratio_over_training.png"),
            }
            if hists:
                images["plots/activation_histograms"] = plots.plot_activation_histograms(
                    hists, pdir / "activation_histograms.png")
        except Exception as e:  # a figure must never stop training
            log.warning("plotting failed: %s: %s", type(e).__name__, e)
            return
        self.tracking.log_images(images, step=self.step)

    # ---------------------------------------------------------------- the loop
    def run(self) -> Summary:
        t0 = time.perf_counter()
        try:
            self._setup()
            summary = self._loop()
        finally:
            if hasattr(self, "tracking"):
                self.tracking.finish()
            if self.monitor is not None:
                self.monitor.close()
            for attr in ("model", "optimizer", "scheduler", "train_loader", "val_loader"):
                self.__dict__.pop(attr, None)
            release(self.accelerator)
            if not self.keep_process_group:
                self.accelerator.end_training()
        summary.wall_s = time.perf_counter() - t0
        return summary

    def _loop(self) -> Summary:
        cfg, acc = self.cfg, self.accelerator
        tc = cfg.train
        model, optimizer = self.model, self.optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.is_main and tc.progress),
                   desc="training", unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s
        window_loss = torch.zeros((), device=acc.device)
        window_steps = 0
        window_tokens = 0
        window_t = time.perf_counter()
        stopped_by = None
        tokens_per_step_local = tc.batch_size * cfg.data.block_size
        done = self.total_steps <= self.step
        model.train()
        while not done and self.epoch < tc.epochs:
            epoch = self.epoch
            self._epoch_t0 = window_t = time.perf_counter()
            self.train_loader.set_epoch(epoch)
            loader = self.train_loader
            if self.batches_in_epoch:
                loader = acc.skip_first_batches(self.train_loader, self.batches_in_epoch)
            step_loss = torch.zeros((), device=acc.device)
            for batch in loader:
                if self.monitor is not None and cfg.liveness.sample_every > 1:
                    self.monitor.active = (self.step + 1) % cfg.liveness.sample_every == 0
                if self.monitor is not None and cfg.liveness.histogram_every and \
                        (self.step + 1) % cfg.liveness.histogram_every == 0:
                    self.monitor.histogram_next = True
                with acc.accumulate(model):
                    loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
                    step_loss += loss.detach() / tc.grad_accum
                    acc.backward(loss)
                    self.batches_in_epoch += 1
                    if acc.sync_gradients:
                        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
                        grad_norm = acc.clip_grad_norm_(params, max_norm)
                        mean_loss = acc.reduce(step_loss, "mean") if acc.num_processes > 1 else step_loss
                        finite = torch.isfinite(mean_loss)
                        if tc.mixed_precision != "fp16":  # fp16's scaler skips inf gradients by itself
                            finite = finite & torch.isfinite(grad_norm)
                        if not bool(finite):  # the one host sync per optimizer step: a NaN must never reach the weights
                            msg = (f"non-finite loss or gradient at step {self.step + 1} (loss {mean_loss.item():.4g}, "
                                   f"grad norm {float(grad_norm):.4g}); the optimizer update was skipped")
                            optimizer.zero_grad(set_to_none=True)
                            step_loss.zero_()
                            self.bad_steps += 1
                            if self.bad_steps > tc.max_bad_steps:
                                raise TrainingHalted(msg + f". Stopping: {self.bad_steps} such step(s), train.max_bad_steps="
                                                     f"{tc.max_bad_steps}; the last good checkpoint is kept in "
                                                     f"{self.run_dir / 'checkpoints'}")
                            log.warning("%s (%d of train.max_bad_steps=%d)", msg, self.bad_steps, tc.max_bad_steps)
                            continue
                        optimizer.step()
                        self.scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue
                # ---- step-level work, once per optimizer step
                self.step += 1
                if self.reviver is not None:
                    self.reviver.after_optimizer_step(acc.unwrap_model(model))
                window_loss += mean_loss.detach()
                step_loss = torch.zeros((), device=acc.device)
                window_steps += 1
                step_tokens = tokens_per_step_local * tc.grad_accum * acc.num_processes
                window_tokens += step_tokens
                self.tokens_seen += step_tokens
                bar.update(1)
                if self.monitor is not None and cfg.liveness.histogram_every and \
                        self.step % cfg.liveness.histogram_every == 0:
                    self._log_histograms(self.monitor.histograms())
                if self.step % tc.log_every == 0:
                    now = time.perf_counter()
                    actions = self._log_train(window_loss, window_steps, window_tokens / (now - window_t), grad_norm)
                    bar.set_postfix(loss=f"{window_loss.item() / max(window_steps, 1):.3f}")
                    window_loss.zero_()
                    # the next window starts now, so the cost of this log (liveness report, alerts) counts in it
                    window_steps, window_tokens, window_t = 0, 0, now
                    stopped_by = self._act_on_alerts(actions)
                if tc.eval_every and self.step % tc.eval_every == 0:
                    self.last_val = self.evaluate(tc.eval_batches)
                    self.tracking.log(self.last_val, step=self.step)
                if cfg.revival.every_steps and self.step % cfg.revival.every_steps == 0:
                    self.revive()
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
                if stopped_by or (tc.max_steps and self.step >= tc.max_steps):
                    break
            else:
                # the epoch ran to its end
                self.epoch += 1
                self.batches_in_epoch = 0
                stopped_by = self._epoch_end(epoch) or stopped_by
                self.save_checkpoint()
                if stopped_by:
                    break
                continue
            # left the epoch early: max_steps or an alert's stop
            if not stopped_by:
                self.epoch += 1
                self.batches_in_epoch = 0
                stopped_by = self._epoch_end(epoch)
            self.save_checkpoint()
            break
        bar.close()
        return self._finish(stopped_by)

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
            due = reaches_multiple(self.step, self.cfg.train.log_every, self.cfg.liveness.frequency_histogram_every)
            actions = self._log_liveness(counts, when="train", histograms=due)
        for hook in self.after_train_log:
            hook(self)
        return actions

    def _finish(self, stopped_by: str | None) -> Summary:
        acc = self.accelerator
        if not self.last_val:
            self.last_val, report = self.measure(self.cfg.train.eval_batches)
            self.last_report = report or self.last_report
        acc.wait_for_everyone()
        if self.is_main:
            tmp = self.run_dir / ".final-tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_final(acc.unwrap_model(self.model), self.data.tokenizer, self.cfg, tmp)
            final = self.run_dir / "final"
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        acc.wait_for_everyone()
        dead = {}
        if self.last_report is not None:
            m = self.last_report.metrics()
            dead = {site: m[f"liveness/{site}/dead_ratio"] for site in self.cfg.liveness.sites
                    if f"liveness/{site}/dead_ratio" in m}
        tps = 0.0
        if self.is_main and (self.run_dir / "metrics.jsonl").is_file():
            rates = [r["train/tokens_per_s"] for r in map(json.loads, open(self.run_dir / "metrics.jsonl"))
                     if "train/tokens_per_s" in r]
            tps = sorted(rates)[len(rates) // 2] if rates else 0.0
        return Summary(run_dir=str(self.run_dir), steps=self.step, epochs=self.epoch, tokens=self.tokens_seen,
                       tokens_per_s=tps, val_loss=self.last_val.get("val/loss", float("nan")),
                       val_ppl=self.last_val.get("val/ppl", float("nan")), stopped_by=stopped_by, dead_ratio=dead)


def release(accelerator) -> None:
    """Drop the prepared (DDP-wrapped) model and optimizer before the process group goes: a DDP model still
    alive at teardown made 2-process CPU runs hang at exit now and then."""
    import gc

    accelerator.free_memory()
    gc.collect()


def train(cfg: Config, keep_process_group: bool = False) -> Summary:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(cfg, keep_process_group=keep_process_group).run()
