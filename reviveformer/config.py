"""One typed config tree: dataclass schema + YAML recipe + dot-list overrides, merged by `load_config`.

Every field is read somewhere; validation happens in `__post_init__` (where the value enters) and every
OmegaConf or validation failure becomes one `ConfigError` that names the key and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import logging
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from reviveformer.architectures import MLP_SITE, site_names
from reviveformer.errors import ConfigError
from reviveformer.errors import failed_checks as _problems
from reviveformer.errors import raise_problems as _raise
from reviveformer.liveness.options import LivenessConfig

SITES = site_names()  # the built-in sites (reviveformer.architectures); validation reads the registry itself
ALERT_METRICS = ("dead_ratio", "dormant_ratio")
ALERT_ACTIONS = ("none", "revive", "stop")
DATA_SOURCES = ("stdlib", "text", "hub")
MIXED_PRECISION = ("no", "fp16", "bf16")
WANDB_MODES = ("auto", "online", "offline", "disabled")
TASK_KINDS = ("none", "permuted_vocab", "corpora")
REVIVAL_EVERY = ("epoch", "task")
# The flat revival keys of configs saved before each method had its own section, and where they live now.
LEGACY_REVIVAL_KEYS = {
    "fraction": ("synaptic_stripping",),
    "persistent": ("synaptic_stripping",),
    "strip_bias": ("synaptic_stripping",),
    "tau": ("redo", "grama"),
}

# Field metadata: a float field where +inf means something (no limit); nan and -inf are refused there too.
ALLOW_INF = "allow_inf"

log = logging.getLogger("reviveformer")


@dataclass
class ModelConfig:
    n_layer: int = 2
    """Number of transformer blocks."""
    n_embd: int = 64
    """Width of the residual stream."""
    n_head: int = 2
    """Attention heads; must divide n_embd."""
    n_positions: int = 128
    """Longest sequence the position embedding holds; data.block_size may not exceed it."""
    n_inner: int | None = None
    """MLP width; None means 4 * n_embd (GPT-2's default)."""
    dropout: float = 0.0
    """Dropout for residual, embedding and attention (GPT-2's resid/embd/attn_pdrop)."""
    activation: str | None = None
    """MLP activation: a registry name (relu, leaky_relu, elu, selu, gelu, gelu_new, silu, swish, mish, prelu) or
    `package.module:attr`. None: gelu_new (GPT-2's own) for a new model, the checkpoint's own with init_from;
    with init_from, another name swaps the checkpoint's activation."""
    leaky_relu_slope: float = 0.01
    """Negative slope of leaky_relu."""
    init_from: str | None = None
    """A Hugging Face GPT-2 checkpoint directory (or hub name) to fine-tune from; None trains from scratch."""
    trust_remote_code: bool = False
    """Let init_from import the code its config.json names as its activation (`package.module:attr`), which
    runs that code; false refuses such a checkpoint. Built-in activations need no opt-in (as transformers'
    trust_remote_code). `audit` and `strip` take it too, or --trust-remote-code; a saved config's own value is
    never honoured."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of a new model's weights (GPT-2's initializer_range; its residual
    projections get it scaled by 1/sqrt(2 * n_layer)). With init_from, the checkpoint's own value is kept."""

    def __post_init__(self) -> None:
        _raise(
            "model",
            _problems(
                [
                    (self.n_layer >= 1, f"n_layer={self.n_layer} must be >= 1"),
                    (self.n_embd >= 1, f"n_embd={self.n_embd} must be >= 1"),
                    (
                        self.n_head >= 1 and self.n_embd % max(self.n_head, 1) == 0,
                        f"n_head={self.n_head} must be >= 1 and divide n_embd={self.n_embd}",
                    ),
                    (self.n_positions >= 1, f"n_positions={self.n_positions} must be >= 1"),
                    (
                        self.n_inner is None or self.n_inner >= 1,
                        f"n_inner={self.n_inner} must be >= 1 or null",
                    ),
                    (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
                    (self.activation is None or bool(self.activation), "activation must be a name or null"),
                    (self.leaky_relu_slope >= 0, f"leaky_relu_slope={self.leaky_relu_slope} must be >= 0"),
                    (
                        isinstance(self.trust_remote_code, bool),
                        f"trust_remote_code={self.trust_remote_code!r} must be true or false",
                    ),
                    (
                        math.isfinite(self.initializer_range) and self.initializer_range > 0,
                        f"initializer_range={self.initializer_range} must be a positive number",
                    ),
                ]
            ),
        )


@dataclass
class DataConfig:
    source: str = "stdlib"
    """stdlib (the Python standard library's source on this machine), text (files/folders), or hub."""
    path: str | None = None
    """For source=text: a text file or a folder of text files."""
    name: str | None = None
    """For source=hub: the datasets name, e.g. wikitext."""
    config: str | None = None
    """For source=hub: the dataset config, e.g. wikitext-2-raw-v1."""
    text_column: str = "text"
    """For source=hub: the column holding the text."""
    tokenizer: str = "bpe"
    """bpe (trained on the training split and saved with the run), gpt2 (pretrained), or a tokenizer dir."""
    vocab_size: int = 4096
    """Vocabulary size of a trained bpe tokenizer."""
    block_size: int = 128
    """Tokens per training example (packed); at most model.n_positions."""
    val_fraction: float = 0.05
    """Share of documents held out for validation."""
    max_tokens: int | None = None
    """Cap on training tokens (validation is capped in proportion); None uses everything."""
    max_files: int | None = 400
    """For source=stdlib/text folders: at most this many files (sorted by path), None for all."""
    cache_dir: str | None = None
    """Where tokenised datasets are cached; None means ~/.cache/reviveformer."""

    def __post_init__(self) -> None:
        _raise(
            "data",
            _problems(
                [
                    *_source_checks(self),
                    (
                        self.vocab_size >= 300,
                        f"vocab_size={self.vocab_size} must be >= 300 (256 bytes + specials)",
                    ),
                    (self.block_size >= 2, f"block_size={self.block_size} must be >= 2"),
                ]
            ),
        )


def _source_checks(c: DataConfig | CorpusConfig) -> list[tuple[bool, str]]:
    """The checks of the keys that choose a text source (the data section's and each task corpus's)."""
    return [
        (c.source in DATA_SOURCES, f"source={c.source!r} must be one of {', '.join(DATA_SOURCES)}"),
        (c.source != "text" or bool(c.path), "path must be set when source=text"),
        (c.source != "hub" or bool(c.name), "name must be set when source=hub"),
        (0.0 < c.val_fraction < 1.0, f"val_fraction={c.val_fraction} must be in (0, 1)"),
        (c.max_tokens is None or c.max_tokens > 0, f"max_tokens={c.max_tokens} must be > 0 or null"),
        (c.max_files is None or c.max_files > 0, f"max_files={c.max_files} must be > 0 or null"),
    ]


@dataclass
class CorpusConfig:
    """One later task's text for tasks.kind=corpora: the keys of the data section that choose a source (each
    means what it means there). Tokenizer, block size and cache are the data section's: one vocabulary for
    every task."""

    source: str = "stdlib"
    """stdlib, text or hub."""
    path: str | None = None
    """For source=text: a text file or a folder of text files."""
    name: str | None = None
    """For source=hub: the datasets name."""
    config: str | None = None
    """For source=hub: the dataset config."""
    text_column: str = "text"
    """For source=hub: the column holding the text."""
    val_fraction: float = 0.05
    """Share of documents held out for this task's validation split."""
    max_tokens: int | None = None
    """Cap on this task's training tokens (validation in proportion); None uses everything."""
    max_files: int | None = 400
    """For source=stdlib/text folders: at most this many files, None for all."""

    def __post_init__(self) -> None:
        _raise("tasks.corpora[]", _problems(_source_checks(self)))


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"
    """The run directory (config, metrics, liveness, plots, checkpoints, final model)."""
    seed: int = 0
    """Seed for model init, data order and dropout."""
    epochs: int = 1
    """Passes over the training split; each ends with a validation pass (and revival, if on)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in all (None: run all epochs)."""
    batch_size: int = 16
    """Sequences per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up, then cosine to min_lr_ratio * lr)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of lr."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW's second-moment decay (GPT-2/3 practice; PyTorch's own default is 0.999)."""
    adam_eps: float = 1e-8
    """AdamW's epsilon."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    mixed_precision: str = "no"
    """no, fp16 or bf16 (Accelerate's autocast)."""
    compile: bool = False
    """torch.compile the model."""
    log_every: int = 10
    """Log train metrics (and the liveness window) every this many optimizer steps."""
    eval_every: int = 0
    """Run a validation pass every this many steps (0: only at epoch end)."""
    eval_batches: int | None = None
    """Cap on validation batches per pass (None: the whole split)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: only at epoch end)."""
    checkpoint_limit: int = 2
    """Keep at most this many checkpoints (oldest removed first)."""
    resume: str = "never"
    """never, auto (newest complete checkpoint in output_dir, if any), or a checkpoint directory."""
    max_bad_steps: int = 0
    """Non-finite loss/gradient steps to skip before stopping (0: stop at the first)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms, for bit-exact resume tests."""
    progress: bool = True
    """Show a progress bar on the main process."""
    plots: bool = True
    """Draw the epoch-end figures (plots/ and W&B images; with a task sequence, at each task boundary instead).
    false skips them, and the seconds they take, in studies of many small runs: metrics, liveness json and the
    report page are written all the same."""

    def __post_init__(self) -> None:
        # YAML reads a bare `no` as false, which reaches this str field as "False"
        if self.mixed_precision in ("False", "false"):
            self.mixed_precision = "no"
        _raise(
            "train",
            _problems(
                [
                    (bool(self.output_dir), "output_dir must be a non-empty path"),
                    (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
                    (
                        self.max_steps is None or self.max_steps >= 1,
                        f"max_steps={self.max_steps} must be >= 1 or null",
                    ),
                    (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
                    (self.grad_accum >= 1, f"grad_accum={self.grad_accum} must be >= 1"),
                    (math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be a positive number"),
                    (0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]"),
                    (self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0"),
                    (0 <= self.adam_beta1 < 1, f"adam_beta1={self.adam_beta1} must be in [0, 1)"),
                    (0 <= self.adam_beta2 < 1, f"adam_beta2={self.adam_beta2} must be in [0, 1)"),
                    (self.adam_eps > 0, f"adam_eps={self.adam_eps} must be > 0"),
                    (self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0"),
                    (self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0"),
                    (
                        self.mixed_precision in MIXED_PRECISION,
                        f"mixed_precision={self.mixed_precision!r} must be one of {', '.join(MIXED_PRECISION)}",
                    ),
                    (self.log_every >= 1, f"log_every={self.log_every} must be >= 1"),
                    (self.eval_every >= 0, f"eval_every={self.eval_every} must be >= 0"),
                    (
                        self.eval_batches is None or self.eval_batches >= 1,
                        f"eval_batches={self.eval_batches} must be >= 1",
                    ),
                    (self.checkpoint_every >= 0, f"checkpoint_every={self.checkpoint_every} must be >= 0"),
                    (self.checkpoint_limit >= 1, f"checkpoint_limit={self.checkpoint_limit} must be >= 1"),
                    (bool(self.resume), "resume must be never, auto or a checkpoint directory"),
                    (self.max_bad_steps >= 0, f"max_bad_steps={self.max_bad_steps} must be >= 0"),
                ]
            ),
        )


@dataclass
class TasksConfig:
    """A sequence of tasks trained one after another in one run, with one model and one optimizer (continual
    training; docs/design.md, "Training loop"). A section of its own, not under `data`: a task sequence sets
    the run's length and its schedule as well as the data each step sees."""

    kind: str = "none"
    """none (one task: the data as it is), permuted_vocab (task k applies a fixed bijection of the vocabulary
    to every training and validation token id; task 0 is the identity), or corpora (task 0 trains on the data
    section's source, task k on tasks.corpora[k - 1], each with its own validation split)."""
    count: int = 2
    """Number of tasks (with corpora: 1 + the number of tasks.corpora)."""
    steps: int | None = None
    """Optimizer steps per task; a multiple of train.log_every (the end-of-task training loss is then the mean
    of a log window of that task alone). Give this or epochs."""
    epochs: int | None = None
    """Passes over the training split per task, instead of steps."""
    seed: int = 0
    """Seed of the permutations: task k's depends only on this and k, so every arm sees the same tasks."""
    corpora: list[CorpusConfig] = field(default_factory=list)
    """For kind=corpora: the sources of tasks 1, 2, ... (task 0 is the data section's)."""
    restart_schedule: bool = False
    """Restart the learning-rate schedule (warm-up, cosine) at each task; false spans it over the whole run.
    Continual training usually keeps a constant rate (train.warmup_steps=0, train.min_lr_ratio=1): a decaying
    one hides the loss of plasticity."""

    def __post_init__(self) -> None:
        if self.kind == "none":  # the other keys are read only with a task sequence
            _raise(
                "tasks", _problems([(not self.corpora, "corpora is read only with kind=corpora (kind=none)")])
            )
            return
        _raise(
            "tasks",
            _problems(
                [
                    (self.kind in TASK_KINDS, f"kind={self.kind!r} must be one of {', '.join(TASK_KINDS)}"),
                    (self.count >= 1, f"count={self.count} must be >= 1"),
                    (
                        (self.steps is None) != (self.epochs is None),
                        f"steps={_show(self.steps)} and epochs={_show(self.epochs)}: give exactly one of them "
                        "(optimizer steps or passes over the training split per task)",
                    ),
                    (self.steps is None or self.steps >= 1, f"steps={self.steps} must be >= 1"),
                    (self.epochs is None or self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
                    (
                        self.kind != "corpora" or self.count == len(self.corpora) + 1,
                        f"count={self.count} must be 1 + the {len(self.corpora)} tasks.corpora with kind=corpora "
                        "(task 0 trains on the data section's source)",
                    ),
                    (
                        self.kind == "corpora" or not self.corpora,
                        f"corpora is read only with kind=corpora (kind={self.kind})",
                    ),
                    (
                        isinstance(self.restart_schedule, bool),
                        f"restart_schedule={self.restart_schedule!r} must be true or false",
                    ),
                ]
            ),
        )


@dataclass
class AlertRule:
    """One alert rule: fire when a layer's `metric` at `site` rises above `above` (once per crossing; it re-arms
    when the layer falls back), optionally only for `layers`, and ask for `action` (none, revive, stop)."""

    name: str = "dead_mlp"
    """Name; the metric alerts/<name> is logged."""
    site: str = MLP_SITE
    """Site the rule watches."""
    metric: str = "dead_ratio"
    """dead_ratio or dormant_ratio."""
    above: float = 0.3
    """Trips when a layer's metric rises above this."""
    layers: list[int] | None = None
    """Layers watched (None: all)."""
    action: str = "none"
    """none, revive (run the revival step now) or stop (checkpoint and stop cleanly)."""

    def __post_init__(self) -> None:
        _raise(
            f"alerts.rules[{self.name}]",
            _problems(
                [
                    (
                        bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name),
                        f"name={self.name!r} must be letters, digits, _ or -",
                    ),
                    (
                        self.site in site_names(),
                        f"site={self.site!r} must be one of {', '.join(site_names())}",
                    ),
                    (
                        self.metric in ALERT_METRICS,
                        f"metric={self.metric!r} must be one of {', '.join(ALERT_METRICS)}",
                    ),
                    (0.0 <= self.above <= 1.0, f"above={self.above} must be in [0, 1]"),
                    (
                        self.layers is None or (len(self.layers) > 0 and min(self.layers) >= 0),
                        f"layers={self.layers} must be null (all layers) or a non-empty list of layer indices >= 0",
                    ),
                    (
                        self.action in ALERT_ACTIONS,
                        f"action={self.action!r} must be one of {', '.join(ALERT_ACTIONS)}",
                    ),
                ]
            ),
        )


@dataclass
class AlertsConfig:
    """The alert rules an `AlertManager` checks (the recipe's `alerts` section)."""

    rules: list[AlertRule] = field(default_factory=list)
    """Alert rules, checked at every liveness log and epoch-end measurement."""
    wandb_wait_s: float = field(default=300.0, metadata={ALLOW_INF: True})
    """Least time between two wandb.alert calls of one rule (inf: one alert per rule for the whole run)."""

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _raise(
            "alerts",
            _problems(
                [
                    (not dupes, f"rules have duplicate names {dupes}"),
                    (self.wandb_wait_s >= 0, f"wandb_wait_s={self.wandb_wait_s} must be >= 0"),
                ]
            ),
        )


@dataclass
class RevivalConfig:
    """The keys every method shares. Each method adds its own section `revival.<name>`, its `Options` dataclass
    (`revival_config_class` builds the full section; docs/design.md, Revival)."""

    method: str = "none"
    """none, synaptic_stripping, redo, grama (gradient-magnitude dormancy, Liu et al. 2025),
    continual_backprop (Dohare et al. 2024), shrink_perturb (Ash & Adams 2020), l2_init (Kumar et al. 2023),
    fresh_start, or your own Reviver as package.module:Class (imported only when named here)."""
    every_steps: int = 0
    """Revive every this many optimizer steps instead of at epoch end (0: at `every`)."""
    every: str = "epoch"
    """When revival runs while every_steps is 0: at each epoch end (epoch) or at each task boundary (task,
    with a task sequence: tasks.kind)."""

    def __post_init__(self) -> None:
        _raise(
            "revival",
            _problems(
                [
                    (bool(self.method), "method must be none, a method name or package.module:Class"),
                    (self.every_steps >= 0, f"every_steps={self.every_steps} must be >= 0"),
                    (
                        self.every in REVIVAL_EVERY,
                        f"every={self.every!r} must be one of {', '.join(REVIVAL_EVERY)}",
                    ),
                ]
            ),
        )


def reviver_class(method: str) -> Any:
    """The Reviver class of a `revival.method` value (None for none); a ConfigError names the valid ones."""
    # Imported here, not at the top: the method classes (torch) own their config sections, not this module.
    from reviveformer.revival import reviver_class as resolve

    return resolve(method)


@functools.cache
def revival_config_class(plugin: type | None = None) -> type:
    """The revival section's schema: the shared keys plus `revival.<name>` for every registered method and
    for `plugin` (a user's Reviver class named by revival.method) when given."""
    from reviveformer.revival import REVIVERS

    methods = [*REVIVERS.values(), *([plugin] if plugin is not None else [])]
    sections = [(cls.name, cls.Options, field(default_factory=cls.Options)) for cls in methods if cls.Options]
    return make_dataclass("RevivalConfig", sections, bases=(RevivalConfig,))


def _revival_config() -> RevivalConfig:
    return revival_config_class()()


@dataclass
class WandbConfig:
    mode: str = "auto"
    """auto (online with credentials, else offline), online, offline or disabled."""
    project: str = "reviveformer"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None uses the default."""
    name: str | None = None
    """Run name; None uses the run directory's name."""
    group: str | None = None
    """Group that puts arms of one comparison side by side."""
    job_type: str | None = None
    """baseline, stripping, redo, sweep...; None derives it from revival.method."""
    tags: list[str] = field(default_factory=list)
    """Tags of the run."""

    def __post_init__(self) -> None:
        _raise(
            "wandb",
            _problems(
                [
                    (self.mode in WANDB_MODES, f"mode={self.mode!r} must be one of {', '.join(WANDB_MODES)}"),
                ]
            ),
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    revival: RevivalConfig = field(default_factory=_revival_config)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)

    def __post_init__(self) -> None:
        if self.data.block_size > self.model.n_positions:
            raise ValueError(
                f"data.block_size={self.data.block_size} is above model.n_positions={self.model.n_positions}: "
                "lower data.block_size or raise model.n_positions"
            )


TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # a saved fast or slow Hugging Face tokenizer


def checkpoint_json(init_from: str) -> dict[str, Any] | None:
    """The `config.json` of a local checkpoint folder (None for a hub name, a missing or unreadable one: the
    model loader reports those)."""
    path = Path(init_from).expanduser() / "config.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def training_problems(cfg: Config) -> list[str]:
    """What makes a config unfit for training although each section is valid on its own: the checks that
    span sections. Run when the config loads, so a run is refused before any data is prepared."""
    problems: list[str] = []
    live, revival = cfg.liveness, cfg.revival
    watched = list(live.sites) if live.enabled else []
    if revival.method != "none":
        if not live.enabled:
            problems.append(
                f"revival.method={revival.method} needs liveness.enabled=true (revival decides from "
                "the liveness counts); set liveness.enabled=true or revival.method=none"
            )
        elif MLP_SITE not in live.sites:
            problems.append(
                f"revival.method={revival.method} needs '{MLP_SITE}' in liveness.sites={list(live.sites)} "
                f"(the dead set is taken there); add {MLP_SITE} or set revival.method=none"
            )
    saved = checkpoint_json(cfg.model.init_from) if cfg.model.init_from else None
    # GPT-2 says n_layer, the Llama family num_hidden_layers
    n_layer = (
        saved.get("n_layer", saved.get("num_hidden_layers", cfg.model.n_layer))
        if saved
        else cfg.model.n_layer
    )
    n_layer = n_layer if isinstance(n_layer, int) else cfg.model.n_layer  # a broken config.json: the loader's
    layers_from = f"model.init_from={cfg.model.init_from}" if saved else f"model.n_layer={n_layer}"
    for rule in cfg.alerts.rules:
        at = f"alerts.rules[{rule.name}]"
        if not live.enabled:
            problems.append(f"{at} needs liveness.enabled=true (alerts read the liveness metrics)")
        elif rule.site not in watched:
            problems.append(
                f"{at}.site={rule.site} is not watched, so the rule would never fire: liveness.sites="
                f"{watched}; add {rule.site} to liveness.sites or give the rule one of {', '.join(watched)}"
            )
        if rule.action == "revive" and revival.method == "none":
            from reviveformer.revival import REVIVERS

            problems.append(
                f"{at}.action=revive needs a revival method, but revival.method=none; set revival.method "
                f"to {' or '.join(REVIVERS)} (or your own package.module:Class), or another action "
                "(none, stop)"
            )
        missing = sorted(i for i in rule.layers or [] if i >= n_layer)
        if missing:
            problems.append(
                f"{at}.layers has {missing}, which are not layers of the model: {layers_from} has layers "
                f"0..{n_layer - 1}"
            )
    # Training windows are cut only at a log (epoch-end measurements count in a window of their own), so a
    # window of log_every consecutive steps holds a counted step exactly when sample_every <= log_every.
    if live.enabled and live.sample_every > cfg.train.log_every:
        problems.append(
            f"liveness.sample_every={live.sample_every} is above train.log_every={cfg.train.log_every}: "
            "a logged liveness window would hold no counted step (and read as all dead); give "
            f"liveness.sample_every <= {cfg.train.log_every} or a larger train.log_every"
        )
    problems += _task_problems(cfg)
    if saved:
        problems += _checkpoint_problems(cfg, saved)
    return problems


def _task_problems(cfg: Config) -> list[str]:
    """What a task sequence needs of the other sections, and what only a task sequence allows."""
    tasks, revival, tc = cfg.tasks, cfg.revival, cfg.train
    if tasks.kind == "none":
        if revival.every == "task":
            return [
                "revival.every=task needs a task sequence (tasks.kind, one of "
                f"{', '.join(k for k in TASK_KINDS if k != 'none')}); set revival.every=epoch"
            ]
        return []
    problems = []
    if revival.every == "task" and revival.every_steps:
        problems.append(
            f"revival.every=task and revival.every_steps={revival.every_steps} both say when to revive; give "
            "revival.every_steps=0 to revive at task boundaries, or revival.every=epoch"
        )
    if tasks.steps is not None and tasks.steps % tc.log_every:
        problems.append(
            f"tasks.steps={tasks.steps} must be a multiple of train.log_every={tc.log_every} (the end-of-task "
            "training loss is the mean of the task's last log window)"
        )
    if tc.epochs != 1:
        problems.append(
            f"train.epochs={tc.epochs} does not apply with tasks.kind={tasks.kind}: the run is tasks.count "
            "tasks of tasks.steps (or tasks.epochs) each; leave train.epochs at 1"
        )
    return problems


def _checkpoint_problems(cfg: Config, saved: dict[str, Any]) -> list[str]:
    """What makes model.init_from's local checkpoint (its config.json `saved`) unfit for this config. A folder
    that is no checkpoint reviveformer reads at all is the model loader's to report."""
    from reviveformer.architectures import (
        ARCHITECTURES,
    )  # torch and transformers: only when a checkpoint is read

    problems: list[str] = []
    kind = saved.get("model_type")
    if kind not in ARCHITECTURES:
        return problems
    # refused here, before any data is prepared or written, rather than at the first revival mid-run
    refusal = ARCHITECTURES[kind].STRIP_REFUSAL
    if cfg.revival.method == "synaptic_stripping" and refusal:
        problems.append(
            f"revival.method=synaptic_stripping does not apply to model.init_from={cfg.model.init_from}, a "
            f"'{kind}' model: {refusal}"
        )
    if cfg.data.tokenizer == "bpe":
        folder = Path(cfg.model.init_from).expanduser()
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            problems.append(
                f"model.init_from={cfg.model.init_from} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}), "
                "and data.tokenizer=bpe would train a new vocabulary its embeddings do not know; give "
                "data.tokenizer=PATH of the tokenizer it was trained with (or gpt2 for a stock GPT-2)"
            )
    return problems


def nonfinite_problems(node: Any, at: str = "") -> list[str]:
    """Every float of a config tree (sections, alert rules, each revival method's section, a plug-in's own)
    that is nan or infinite where that means nothing: a section's range check such as `>= 0` lets inf
    through, and `nan < 0` is false. Walks the values, so a new float field is covered without listing it."""
    problems: list[str] = []
    for f in fields(node):
        value, key = getattr(node, f.name), f"{at}.{f.name}" if at else f.name
        if is_dataclass(value):
            problems += nonfinite_problems(value, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                where = f"{key}[{getattr(item, 'name', i)}]"  # alert rules are named by name, as elsewhere
                if is_dataclass(item):
                    problems += nonfinite_problems(item, where)
                elif isinstance(item, float) and not math.isfinite(item):
                    problems.append(f"{where}={item} must be a finite number")
        elif isinstance(value, float) and not math.isfinite(value):
            if value == math.inf and f.metadata.get(ALLOW_INF):
                continue
            finite = "a finite number or inf" if f.metadata.get(ALLOW_INF) else "a finite number"
            problems.append(f"{key}={value} must be {finite}")
    return problems


def check_training_config(cfg: Config) -> None:
    """Raise one ConfigError listing every cross-section problem of `training_problems`."""
    problems = training_problems(cfg)
    if problems:
        raise ConfigError("invalid config for training: " + "; ".join(problems))


def upgrade_revival_keys(layer: Any, where: str, *, warn: bool = True) -> Any:
    """Move the flat revival keys of configs written before each method had its own section (`revival.fraction`,
    `persistent`, `strip_bias`, `tau`) into their sections, in place, once, as a layer is read; returns `layer`.
    `tau` was shared by ReDo and GraMa, so it sets both. One warning names the moves (`warn`)."""
    revival = layer.get("revival") if isinstance(layer, dict) else None
    if not isinstance(revival, dict):
        return layer
    moved = []
    for old, sections in LEGACY_REVIVAL_KEYS.items():
        if old not in revival:
            continue
        value = revival.pop(old)
        for name in sections:
            section = revival.setdefault(name, {})
            if not isinstance(section, dict):
                continue  # a section that is not a mapping: check_shape names it
            if old in section and section[old] != value:
                raise ConfigError(
                    f"{where}: revival.{old} (the old flat key, read as revival.{name}.{old}) and "
                    f"revival.{name}.{old} disagree; give only revival.{name}.{old}"
                )
            section[old] = value
        moved.append(f"revival.{old} as {' and '.join(f'revival.{n}.{old}' for n in sections)}")
    if moved and warn:
        log.warning(
            "%s: old flat revival keys read in their method's section: %s (write them there; "
            "docs/design.md, config keys)",
            where,
            "; ".join(moved),
        )
    return layer


def _list_hint(hint: Any) -> tuple[Any, bool] | None:
    """(item type, may be null) of a `list[X]` or `list[X] | None` field, else None."""
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], False
    args = typing.get_args(hint)
    for arg in args:
        if typing.get_origin(arg) is list and type(None) in args:
            return typing.get_args(arg)[0], True
    return None


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def check_shape(value: Any, schema: type | None = None, at: str = "", where: str = "config") -> None:
    """Check a plain recipe/override layer against the schema's shape: a mapping where the schema has a
    section, a list where it has a list, known keys only. Scalar types are left to OmegaConf; these are the
    cases where its merge errors name the wrong place (or no place) and not what is valid there."""
    schema = schema or Config
    names = [f.name for f in fields(schema)]
    if not isinstance(value, dict):
        what = f"'{at}'" if at else "the config"
        raise ConfigError(
            f"{where}: {what} must be a mapping of its keys ({', '.join(names)}), not {_show(value)}"
        )
    hints = typing.get_type_hints(schema)
    for key, sub in value.items():
        full = f"{at}.{key}" if at else str(key)
        if (
            key not in names
            and isinstance(schema, type)
            and issubclass(schema, RevivalConfig)
            and isinstance(sub, dict)
        ):
            continue  # a plug-in method's section: load_config checks it once revival.method is known
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            place = f"'{at}'" if at else "the top level"
            raise ConfigError(
                f"{where}: unknown config key '{full}'{hint} (valid keys at {place}: {', '.join(names)})"
            )
        if is_dataclass(hints[key]):
            # the revival section's full schema holds each method's own section (revival_config_class)
            check_shape(
                sub, revival_config_class() if hints[key] is RevivalConfig else hints[key], full, where
            )
            continue
        listed = _list_hint(hints[key])
        if listed is None or (sub is None and listed[1]):
            continue
        item, _ = listed
        entry_kind = (
            f"a mapping of {', '.join(f.name for f in fields(item))}"
            if is_dataclass(item)
            else getattr(item, "__name__", str(item))
        )
        if not isinstance(sub, list):
            whole = "" if "[" in full else f"; an override gives the whole list: {full}=[...]"
            raise ConfigError(
                f"{where}: '{full}' must be a list (each entry {entry_kind}), not {_show(sub)}{whole}"
            )
        for i, entry in enumerate(sub):
            if is_dataclass(item):
                check_shape(entry, item, f"{full}[{i}]", where)
            elif isinstance(entry, (dict, list)):
                raise ConfigError(f"{where}: '{full}[{i}]' must be {entry_kind}, not {_show(entry)}")


def _suggest(key: str, schema_node: Any) -> str:
    names = [f.name for f in fields(schema_node)] if is_dataclass(schema_node) else []
    close = difflib.get_close_matches(key, names, n=1)
    valid = f" (valid keys: {', '.join(names)})" if names else ""
    return f"; did you mean '{close[0]}'?" if close else valid


def _schema_at(full_key: str, plugin: type | None = None) -> Any:
    node: Any = Config
    for part in full_key.split(".")[:-1]:
        part = part.split("[")[0]
        by_name = {f.name: f for f in fields(node)} if is_dataclass(node) else {}
        if part not in by_name:
            return None
        f = by_name[part]
        node = f.default_factory() if f.default_factory is not field().default_factory else f.type  # type: ignore[misc]
        if isinstance(node, list):  # alerts.rules
            node = AlertRule
        elif isinstance(node, RevivalConfig):  # with the section of a user's method named by revival.method
            node = revival_config_class(plugin)
        elif not is_dataclass(node):
            return None
    return node


def _describe(err: OmegaConfBaseException, where: str, plugin: type | None = None) -> str:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).split("\n")[0]
    if isinstance(err, ConfigKeyError) and key:
        leaf = key.split(".")[-1]
        return f"{where}: unknown config key '{key}'{_suggest(leaf, _schema_at(key, plugin))}"
    if isinstance(err, ValidationError) and key:
        return f"{where}: bad value for '{key}': {msg}"
    return f"{where}: {msg}" + (f" (key '{key}')" if key else "")


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe file as a DictConfig; a missing file or invalid YAML is a ConfigError naming the file.

    A recipe may start from another with `base: other.yaml` (a path relative to the recipe's folder): the
    base is read first and this recipe's keys win, so an arm holds only what differs from its base."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist (give a YAML file such as recipes/quickstart.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} must be a mapping of sections (model, data, train, ...), not {type(data).__name__}"
        )
    base = data.pop("base", None)
    upgrade_revival_keys(data, f"recipe {path}")
    check_shape(data, where=f"recipe {path}")
    if base is None:
        return OmegaConf.create(data)
    base_path = (path.parent / str(base)).resolve()
    if not base_path.is_file():
        # the missing file alone does not say which recipe to fix when several share a base
        raise ConfigError(
            f"recipe {path}: its base: {base} names {base_path}, which does not exist (a base path is "
            "relative to the recipe's own folder)"
        )
    if base_path in _seen:
        raise ConfigError(f"recipe {path}: base: {base} makes a cycle ({' -> '.join(p.name for p in _seen)})")
    parent = read_recipe(base_path, (*_seen, path.resolve()))
    try:
        return OmegaConf.merge(parent, OmegaConf.create(data))
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {path}: {str(e).splitlines()[0]}") from None


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value (for example train.lr=3e-4)")
    try:
        layer = OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as e:
        raise ConfigError(f"override '{item}': {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # the value is read as YAML: an unclosed [ or { ends here
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"override '{item}': the value is not valid YAML ({problem}); close its brackets, or "
            "quote it to give a plain string (key='value')"
        ) from None
    plain = upgrade_revival_keys(OmegaConf.to_container(layer), f"override '{item}'")
    check_shape(plain, where=f"override '{item}'")
    return OmegaConf.create(plain)


def load_config(
    recipe: str | Path | DictConfig | dict | None = None,
    overrides: list[str] | None = None,
    *,
    training: bool = True,
) -> Config:
    """Schema defaults <- recipe <- dot-list overrides, validated; any problem is one ConfigError.

    `training` adds the cross-section checks of a training run (`training_problems`); `audit` and `strip`,
    which only measure a saved model, load without them."""
    schema = OmegaConf.structured(Config)
    layers: list[tuple[str, Any]] = []
    if recipe is not None:
        if isinstance(recipe, (str, Path)):
            layers.append((f"recipe {recipe}", read_recipe(recipe)))
        else:
            plain = (
                OmegaConf.to_container(recipe) if isinstance(recipe, DictConfig) else copy.deepcopy(recipe)
            )
            upgrade_revival_keys(plain, "config")
            check_shape(plain)
            layers.append(("config", OmegaConf.create(plain)))
    for item in overrides or []:
        layers.append((f"override '{item}'", _parse_override(item)))
    methods = [m for _, layer in layers if (m := OmegaConf.select(layer, "revival.method")) is not None]
    method = reviver_class(str(methods[-1])) if methods else None
    plugin = (
        method
        if method is not None and method.name not in revival_config_class().__dataclass_fields__
        else None
    )
    if plugin is not None:
        # a user's own method: its section revival.<name> joins the schema (imported only because it is named)
        schema.revival = revival_config_class(plugin)()
    merged = schema
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, where, plugin)) from None
        except TypeError as e:  # a container shape check_shape did not foresee
            raise ConfigError(f"{where}: {e}") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except ValueError as e:
        raise ConfigError(f"invalid config: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "config", plugin)) from None
    assert isinstance(cfg, Config)
    nonfinite = nonfinite_problems(cfg)
    if nonfinite:
        raise ConfigError("invalid config: " + "; ".join(nonfinite))
    if training:
        check_training_config(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML files and W&B)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
