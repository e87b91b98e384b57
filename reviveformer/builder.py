"""The run's set-up: turns a Config into the parts a Trainer runs (as torchtitan's config sections build their
components): the checks that must pass before anything is written, the model and tokenizer, the data, the
optimizer and its schedule, the monitor and the reviver, the alerts and the `TrainingState` that saves and
restores them (`build_run`), and, once the run writes its folder, the loop's parts (`build_loop`).

Each function takes the narrowest slice of the config it needs and knows nothing of the loop; the Trainer
calls them in order and wires what they return (docs/design.md, "Training loop").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader

from reviveformer import activations
from reviveformer.alerts import AlertManager, JsonlAlertSink, RateLimitedSink, console_sink, titled_alert_sink
from reviveformer.config import (
    AlertsConfig,
    Config,
    LivenessConfig,
    TrainConfig,
    save_config,
    to_dict,
)
from reviveformer.data import PackedData, load_tokenizer, prepare_data
from reviveformer.errors import CheckpointError, DataError, UserError
from reviveformer.evaluation import Measurement, val_loader
from reviveformer.liveness import LivenessMonitor
from reviveformer.loop import (
    BadSteps,
    Checkpointer,
    EpochEnd,
    LivenessLog,
    RevivalPass,
    RevivalTiming,
    RunControl,
    RunEnd,
    StepGuard,
    TaskEnd,
    TrainLog,
    Validator,
)
from reviveformer.loop.position import Position
from reviveformer.loop.training_state import MonitorState, PositionState, TrainingState
from reviveformer.memory import check_fits
from reviveformer.model import DEFAULT_ACTIVATION, build_model, describe, init_from_checkpoint, model_summary
from reviveformer.resume import check_resume, resume_path, saved_tokenizer
from reviveformer.revival import Reviver, arm_of_method, build_reviver, check_supported
from reviveformer.tasks import TaskBatches, TaskSequence, steps_per_epoch
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")


# ------------------------------------------------------------------------------------------- checks


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


def check_run(cfg: Config, run_dir: Path) -> Path | None:
    """What must hold before any data is prepared or anything written, on every process (an error raised on
    one alone would hang the others): the memory, the resume, the activation. Returns the checkpoint to resume
    from, if any."""
    check_fits(cfg)  # weights + optimizer state against free memory, before any data is prepared
    resume_from = resume_path(cfg.train.resume, run_dir)
    if cfg.train.resume == "never" and (run_dir / "config.yaml").is_file():
        raise UserError(
            f"train.output_dir={run_dir} already holds a run; continue it with "
            "train.resume=auto, or give another train.output_dir (nothing was changed)"
        )
    if cfg.train.resume == "auto" and resume_from is None and (run_dir / "config.yaml").is_file():
        # starting afresh there would mix two runs' metrics and alerts in one folder
        raise UserError(
            f"train.output_dir={run_dir} holds a run but no complete checkpoint to continue it from; give another "
            "train.output_dir, or remove that folder to start it again (nothing was changed)"
        )
    activations.validate_activation(cfg.model.activation or DEFAULT_ACTIVATION, cfg.model.leaky_relu_slope)
    return resume_from


# ------------------------------------------------------------------------------------------- the process


def build_accelerator(tc: TrainConfig) -> Accelerator:
    """The run's Accelerator: gradient accumulation, mixed precision, Inductor with `train.compile`, a seedable
    sampler (the data order a resume continues), the schedule stepped once per optimizer step."""
    return Accelerator(
        gradient_accumulation_steps=tc.grad_accum,
        mixed_precision=tc.mixed_precision,
        dynamo_backend="inductor" if tc.compile else "no",
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )


def release_accelerator(accelerator) -> None:
    """Drop the prepared (DDP-wrapped) model and optimizer before the process group goes: a DDP model still
    alive at teardown made 2-process CPU runs hang at exit now and then."""
    import gc

    accelerator.free_memory()
    gc.collect()


def build_step_guard(
    cfg: Config, accelerator, parts: LoopParts, control: RunControl, pos, window, reviver, params, inner
):
    """The step guard of the loop's steps (`StepGuard`): it skips a non-finite update on the device and does
    the one host read of what the steps left there."""
    tc = cfg.train
    tokens_per_step = tc.batch_size * cfg.data.block_size * tc.grad_accum * accelerator.num_processes
    return StepGuard(
        parts.bad_steps, control, pos, window, reviver, params, inner, accelerator.scaler, tokens_per_step
    )


def progress_bar(total: int, initial: int, enabled: bool):
    """The training's progress bar (tqdm) of optimizer steps; a log file gets a line every 30 s."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc="training",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 30.0,
    )


# ------------------------------------------------------------------------------------------- model and data


def build_model_and_data(cfg: Config, accelerator, tokenizer=None):
    """The model (new, or `model.init_from`'s) and the prepared data with its tokenizer: `tokenizer` when given
    (a resumed run's own, from its checkpoint), else the configured one. `cfg.model` is replaced by what was
    actually built or loaded, so that the run's config records it. Returns (model, data)."""
    init_model = None
    if cfg.model.init_from:
        init_model = init_from_checkpoint(cfg.model)
        if tokenizer is None and cfg.data.tokenizer == "bpe":
            # fine-tuning keeps the checkpoint's own vocabulary (a folder without one is refused at load)
            tokenizer = load_tokenizer(cfg.model.init_from)
    with accelerator.main_process_first():
        data = prepare_data(cfg.data, cfg.train.seed, tokenizer=tokenizer)
    tok = data.tokenizer
    if init_model is None:
        model = build_model(cfg.model, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
        cfg.model.activation = describe(model).activation
        return model, data
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
    return model, data


def build_task_corpora(cfg: Config, accelerator, tokenizer) -> list[PackedData]:
    """The data of tasks 1, 2, ... for tasks.kind=corpora (none otherwise): each of tasks.corpora prepared as
    the data section would be with that source, with the data section's tokenizer and block size, up front so
    that a bad source refuses the run before anything is written."""
    out = []
    for k, corpus in enumerate(cfg.tasks.corpora if cfg.tasks.kind == "corpora" else []):
        source = dataclasses.replace(cfg.data, **dataclasses.asdict(corpus))
        try:
            with accelerator.main_process_first():
                out.append(prepare_data(source, cfg.train.seed, tokenizer=tokenizer))
        except DataError as e:  # the data loader names the data section's keys: this is the corpus entry's
            entry = f"tasks.corpora[{k}]"
            raise DataError(
                f"{entry}: " + re.sub(r"\bdata\.(source|path)=", rf"{entry}.\1=", str(e))
            ) from None
    return out


def train_loader(dataset, tc: TrainConfig) -> DataLoader:
    """Shuffled, whole batches only. Its own generator: creating an iterator must not draw from the global RNG
    that dropout uses, or a resumed run (which creates its iterator after restoring that RNG) would drift from
    a straight one."""
    loader = DataLoader(
        dataset,
        batch_size=tc.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(tc.seed),
    )
    if len(loader) == 0:
        raise UserError(
            f"train.batch_size={tc.batch_size} is larger than the {len(dataset)} "
            "training blocks; lower train.batch_size or add data"
        )
    return loader


# ------------------------------------------------------------------------------------------- optimizer


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (GPT-2 convention: not on biases, norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where `device` has the fused kernel (CPU, CUDA, MPS, XPU): its `found_inf` lets the trainer
    skip a non-finite step on the device, weights and optimizer state untouched, with no host sync."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # the list fused=True checks

    return torch.optim.AdamW(
        param_groups(model, tc.weight_decay),
        lr=tc.lr,
        betas=(tc.adam_beta1, tc.adam_beta2),
        eps=tc.adam_eps,
        fused=True if device.type in _get_fused_kernels_supported_devices() else None,
    )


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at `total` steps."""

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_scheduler(
    optimizer,
    tc: TrainConfig,
    total_steps: Callable[[], int],
    restart: Callable[[int], tuple[int, int]] | None = None,
):
    """Warm-up then cosine to `train.min_lr_ratio` at the run's last step, read at each step (a resume or a step
    budget moves it); with `restart` (tasks.restart_schedule: a step's (steps into its task, task length)) the
    same over each task, a function of the step alone, so that a resume needs nothing more. `optimizer` may be
    Accelerate's wrapper."""
    if restart is not None:

        def schedule(s: int) -> float:
            into, length = restart(s)
            return warmup_cosine(tc.warmup_steps, length, tc.min_lr_ratio)(into)

    else:
        schedule = lambda s: warmup_cosine(tc.warmup_steps, total_steps(), tc.min_lr_ratio)(s)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, schedule
    )


# ------------------------------------------------------------------------------------------- monitor and reviver


def build_monitor(model, lc: LivenessConfig) -> LivenessMonitor | None:
    return LivenessMonitor(model, lc) if lc.enabled else None


def build_run_reviver(cfg: Config, distributed_type: str) -> Reviver | None:
    """The configured reviver (None for method none), refused where its optimizer-state reset cannot work."""
    reviver = build_reviver(cfg.revival, seed=cfg.train.seed)
    if reviver is not None:
        check_supported(distributed_type)
    return reviver


# ------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """The parts a Trainer runs, prepared by Accelerate, at the position where training starts. The Trainer
    takes them over: this is what the builder hands it, not a second owner."""

    data: PackedData
    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    val_loader: Any
    monitor: LivenessMonitor | None
    reviver: Reviver | None
    alerts: AlertManager
    """The alert rules (their sinks are attached once the run starts writing: `alert_sinks`)."""
    tasks: TaskSequence | None
    """The task sequence (None without one: tasks.kind=none)."""
    task_loaders: list
    """The training loader of each task (tasks.kind=corpora), else the one loader."""
    pos: Position
    state: TrainingState
    """The one door in and out of a checkpoint's state, every stateful part registered (and restored)."""
    total_steps: int = 0
    """The step at which training ends (the schedule reads the same number at every step)."""


def check_batches(cfg: Config, accelerator, loaders: list, task_data: list) -> None:
    """Refuse a run in which some process would get no whole batch (of some task)."""
    for k, (each, d) in enumerate(zip(loaders, task_data, strict=True)):
        if len(each) == 0:  # whole batches, dealt over the processes: none for some of them
            of = f" of task {k}" if len(task_data) > 1 else ""
            raise UserError(
                f"train.batch_size={cfg.train.batch_size} over {accelerator.num_processes} processes: the "
                f"{len(d.train)} training blocks{of} give each process no whole batch; lower train.batch_size, "
                "use fewer processes, or add data (nothing was trained)"
            )


def build_tasks(cfg: Config, accelerator, vocab_size: int, loaders: list) -> TaskSequence | None:
    """The task sequence over the tasks' training loaders (None for tasks.kind=none)."""
    if cfg.tasks.kind == "none":
        return None
    steps = [steps_per_epoch(len(each), cfg.train.grad_accum) for each in loaders]
    return TaskSequence(cfg.tasks, vocab_size, steps, cfg.train.log_every, accelerator.device)


def build_state(
    cfg: Config,
    accelerator,
    pos: Position,
    monitor,
    reviver,
    alerts,
    resume_from: Path | None,
    saved: dict | None,
    task_data: list[PackedData],
) -> TrainingState:
    """The one door in and out of a checkpoint's state, with every stateful part registered once, and each data
    source's fingerprint, which every checkpoint records."""
    state = TrainingState(
        accelerator, cfg, PositionState(pos, cfg.train, accelerator.num_processes), resume_from, saved
    )
    state.data_fingerprint = [d.contents for d in task_data]
    state.register("monitor", MonitorState(monitor, accelerator) if monitor is not None else None)
    state.register("reviver", reviver)
    state.register("alerts", alerts)
    return state


def build_run(cfg: Config, accelerator, run_dir: Path) -> Run:
    """Check, seed, build and prepare every part, and restore a checkpoint when resuming: everything that can
    refuse the run happens here, before the first write (config.yaml, W&B, folders). The caller has checked the
    config (`run_checks.check_run_inputs`) and holds the run folder's lock (`loop.RunControl`)."""
    resume_from = check_run(cfg, run_dir)
    accelerator.wait_for_everyone()
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    set_seed(cfg.train.seed)
    # a resume encodes its data with the run's own tokenizer (never a new one trained on changed data)
    own_tokenizer = saved_tokenizer(resume_from) if resume_from is not None else None
    model, data = build_model_and_data(cfg, accelerator, own_tokenizer)
    log.info("%s", model_summary(model))
    task_data = [data, *build_task_corpora(cfg, accelerator, data.tokenizer)]
    fingerprint = [d.contents for d in task_data]
    saved = check_resume(resume_from, cfg, accelerator.num_processes, fingerprint) if resume_from else None
    monitor = build_monitor(model, cfg.liveness)
    reviver = build_run_reviver(cfg, str(accelerator.distributed_type))
    loader = train_loader(data.train, cfg.train)
    optimizer = build_optimizer(model, cfg.train, accelerator.device)
    if reviver is not None:  # before the first forward: a per-step method hooks the activations it reads
        reviver.attach(model, optimizer)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    loaders = [loader, *(accelerator.prepare(train_loader(d.train, cfg.train)) for d in task_data[1:])]
    check_batches(cfg, accelerator, loaders, task_data)
    tasks = build_tasks(cfg, accelerator, len(data.tokenizer), loaders)
    # the loader of the task a checkpoint stands in (permuted tasks share one)
    current = min(saved.get("task", 0), len(loaders) - 1) if tasks is not None and saved is not None else 0
    pos = Position(step_budget=cfg.train.max_steps, batches_per_epoch=len(loaders[current]))
    vals = [val_loader(accelerator, d.val, cfg.train.batch_size) for d in task_data]
    # validation measures the current task's held-out data
    val = TaskBatches(vals, tasks, pos) if tasks is not None else vals[0]
    alerts = AlertManager(cfg.alerts)
    state = build_state(cfg, accelerator, pos, monitor, reviver, alerts, resume_from, saved, task_data)
    restart = tasks.schedule_point if tasks is not None and cfg.tasks.restart_schedule else None
    length = [0]  # the step at which training ends: known once a checkpoint is loaded, read at every step
    # prepared before a checkpoint is loaded: Accelerate restores the state of what it has prepared
    scheduler = accelerator.prepare(build_scheduler(optimizer, cfg.train, lambda: length[0], restart))
    state.load()  # when resuming: weights, optimizer, schedule, RNG, then each part's own state
    length[0] = pos.total_steps(
        pos.batches_per_epoch, cfg.train.grad_accum, cfg.train.epochs,
        tasks.total_steps if tasks is not None else None,
    )  # fmt: skip
    return Run(
        data, model, optimizer, scheduler, loaders[current], val, monitor, reviver, alerts, tasks, loaders, pos,
        state, total_steps=length[0],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- outputs


def start_outputs(cfg: Config, accelerator, control: RunControl, pos: Position) -> Tracking:
    """The run's first writes, once every check has passed: the lock announced, the folders and config.yaml
    (main process), tracking (W&B) started, status.json running. Returns the tracking."""
    run_dir = Path(cfg.train.output_dir)
    control.start()
    if accelerator.is_main_process:
        start_run_dir(cfg, run_dir)
    job_type = cfg.wandb.job_type or arm_of_method(cfg.revival.method)
    tracking = Tracking(accelerator, cfg.wandb, run_dir, to_dict(cfg), job_type)
    control.status("running", pos)
    return tracking


def start_run_dir(cfg: Config, run_dir: Path) -> None:
    """The run directory's folders and its config.yaml (main process; after every check has passed)."""
    for sub in ("liveness", "plots", "checkpoints"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")


@dataclass
class LoopParts:
    """The parts of the loop that log or write, built once the run has started its folder (`build_loop`)."""

    liveness_log: LivenessLog
    train_log: TrainLog
    validator: Validator
    revival_timing: RevivalTiming
    revival: RevivalPass | None
    epoch_end: EpochEnd
    task_end: TaskEnd
    run_end: RunEnd
    checkpointer: Checkpointer
    bad_steps: BadSteps


def build_loop(cfg: Config, accelerator, run: Run, tracking: Tracking, control: RunControl) -> LoopParts:
    """The loop's parts, each given the collaborators it needs (none of them is given the Trainer)."""
    tc, lc = cfg.train, cfg.liveness
    run_dir, is_main = Path(tc.output_dir), accelerator.is_main_process
    run.alerts.sinks = alert_sinks(cfg.alerts, tracking, run_dir, is_main)
    # a train log's liveness window is read (and logged under its step) at the next moment that syncs anyway:
    # each measurement settles it first, and so do the next train log and a checkpoint (`TrainingState`)
    live = LivenessLog(run.alerts, tracking, is_main)
    measurement = Measurement(
        run.model, run.val_loader, accelerator, run.monitor, run.reviver, tc.eval_batches, live
    )
    validator = Validator(tc.eval_every, measurement, tracking)
    revival = None
    if run.reviver is not None:
        revival = RevivalPass(
            run.reviver, cfg.revival.method, lc.sites, accelerator.unwrap_model(run.model), run.optimizer,
            measurement, tracking, run_dir, is_main, plots=tc.plots,
        )  # fmt: skip
    # a task sequence draws the figures at its boundaries instead of its epoch ends
    epoch_end = EpochEnd(
        run_dir, is_main, run.monitor, measurement, validator, tracking, live, plots=tc.plots and run.tasks is None
    )  # fmt: skip
    figures = epoch_end if tc.plots else None
    return LoopParts(
        live,
        TrainLog(tracking, live, run.monitor, run.reviver, tc.log_every, lc.frequency_histogram_every),
        validator,
        RevivalTiming(run.reviver is not None, cfg.revival.every_steps, cfg.revival.every),
        revival,
        epoch_end,
        TaskEnd(run_dir, is_main, measurement, validator, tracking, live, figures),
        RunEnd(cfg, accelerator, measurement, validator, tracking, control, revival),
        Checkpointer(
            accelerator,
            run_dir / "checkpoints",
            tc.checkpoint_every,
            tc.checkpoint_limit,
            run.model,
            run.state,
            saved_step=run.state.resumed_step,
            tokenizer=run.data.tokenizer,
        ),  # fmt: skip
        BadSteps(tc.max_bad_steps, run_dir / "checkpoints"),
    )


def alert_sinks(ac: AlertsConfig, tracking: Tracking, run_dir: Path, is_main: bool) -> list:
    """Where the alerts go (console, alerts.jsonl, W&B rate-limited): on the main process only."""
    if not is_main:
        return []
    return [
        console_sink,
        JsonlAlertSink(run_dir / "alerts.jsonl"),
        RateLimitedSink(titled_alert_sink(tracking.alert), ac.wandb_wait_s),
    ]
