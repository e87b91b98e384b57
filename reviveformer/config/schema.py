"""The config schema: one dataclass per recipe section, a short docstring under each field, and each section's
own checks in `__post_init__` (where the value enters), naming the field and what is valid.

The `liveness` section's dataclass lives with the monitor (`liveness.options`), the revival section's shared
keys with the revival methods (`revival.options`), below this module; each method's own section comes from its
class (`revival_config_class`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from reviveformer.architectures import MLP_SITE, site_names
from reviveformer.errors import failed_checks as _problems
from reviveformer.errors import raise_problems as _raise
from reviveformer.liveness.options import LivenessConfig
from reviveformer.ranges import within
from reviveformer.revival import REVIVERS
from reviveformer.revival.options import RevivalConfig

SITES = site_names()  # the built-in sites (reviveformer.architectures); validation reads the registry itself
ALERT_METRICS = ("dead_ratio", "dormant_ratio")
ALERT_ACTIONS = ("none", "revive", "stop")
DATA_SOURCES = ("stdlib", "text", "hub")
MIXED_PRECISION = ("no", "fp16", "bf16")
WANDB_MODES = ("auto", "online", "offline", "disabled")
TASK_KINDS = ("none", "permuted_vocab", "corpora")
# Field metadata: a float field where +inf means something (no limit); nan and -inf are refused there too.
ALLOW_INF = "allow_inf"


def show_value(value: Any) -> str:
    """A value as a message shows it: YAML's null for None."""
    return "null" if value is None else repr(value)


@dataclass
class ModelConfig:
    n_layer: int = 2
    """Number of transformer blocks (>= 1; the model's size is bounded by the memory check, not here)."""
    n_embd: int = 64
    """Width of the residual stream (>= 1)."""
    n_head: int = 2
    """Attention heads (>= 1); must divide n_embd."""
    n_positions: int = 128
    """Longest sequence the position embedding holds (>= 1); data.block_size may not exceed it."""
    n_inner: int | None = None
    """MLP width (>= 1); None means 4 * n_embd (GPT-2's default)."""
    dropout: float = 0.0
    """Dropout for residual, embedding and attention (GPT-2's resid/embd/attn_pdrop), in [0, 1)."""
    activation: str | None = None
    """MLP activation: a registry name (relu, leaky_relu, elu, selu, gelu, gelu_new, silu, swish, mish, prelu) or
    `package.module:attr`. None: gelu_new (GPT-2's own) for a new model, the checkpoint's own with init_from;
    with init_from, another name swaps the checkpoint's activation."""
    leaky_relu_slope: float = field(
        default=0.01,
        metadata=within(0, 1, why="above 1 the negative side is the steeper one: not a leaky ReLU"),
    )
    """Negative slope of leaky_relu, in [0, 1] (0.01 to 0.3 in the literature; 1 is the identity)."""
    init_from: str | None = None
    """A Hugging Face GPT-2 checkpoint directory (or hub name) to fine-tune from; None trains from scratch."""
    trust_remote_code: bool = False
    """Let init_from import the code its config.json names as its activation (`package.module:attr`), which
    runs that code; false refuses such a checkpoint. Built-in activations need no opt-in (as transformers'
    trust_remote_code). `audit` and `strip` take it too, or --trust-remote-code; a saved config's own value is
    never honoured."""
    initializer_range: float = field(
        default=0.02,
        # LayerNorm'd inputs times weights of std s give pre-activations of std s * sqrt(n_embd)
        metadata=within(
            0,
            1,
            low_open=True,
            why="above 1 attention scores and activations start saturated: nothing learns",
        ),
    )
    """Standard deviation of the normal init of a new model's weights, in (0, 1] (GPT-2's initializer_range,
    0.02; its residual projections get it scaled by 1/sqrt(2 * n_layer)). With init_from, the checkpoint's own
    value is kept."""

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
    """Vocabulary size of a trained bpe tokenizer (>= 300: 256 bytes and the specials)."""
    block_size: int = 128
    """Tokens per training example (packed), >= 2; at most model.n_positions."""
    val_fraction: float = 0.05
    """Share of documents held out for validation, in (0, 1)."""
    max_tokens: int | None = None
    """Cap on training tokens (> 0; validation is capped in proportion); None uses everything."""
    max_files: int | None = 400
    """For source=stdlib/text folders: at most this many files (> 0, sorted by path), None for all."""
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
    """Share of documents held out for this task's validation split, in (0, 1)."""
    max_tokens: int | None = None
    """Cap on this task's training tokens (> 0; validation in proportion); None uses everything."""
    max_files: int | None = 400
    """For source=stdlib/text folders: at most this many files (> 0), None for all."""

    def __post_init__(self) -> None:
        _raise("tasks.corpora[]", _problems(_source_checks(self)))


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"
    """The run directory (config, metrics, liveness, plots, checkpoints, final model)."""
    seed: int = field(default=0, metadata=within(0, 2**32 - 1, why="numpy's seed, which set_seed also sets"))
    """Seed for model init, data order and dropout, in [0, 2**32 - 1]."""
    epochs: int = 1
    """Passes over the training split (>= 1); each ends with a validation pass (and revival, if on)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in all (>= 1; None: run all epochs)."""
    batch_size: int = 16
    """Sequences per micro-batch per process (>= 1; bounded by the memory, not here)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (>= 1)."""
    lr: float = field(
        default=1e-3,
        # AdamW moves each weight by about lr per step. A float32 weight of GPT-2's init scale (0.02) has a
        # spacing of 1.9e-9: a smaller step rounds away. A step of 1 is 50 times that init scale.
        metadata=within(
            1e-9,
            1,
            why="below it AdamW's steps round away in float32 weights, above it one step wipes out the init",
        ),
    )
    """Peak learning rate (linear warm-up, then cosine to min_lr_ratio * lr), in [1e-9, 1] (AdamW's usual
    1e-5 to 3e-2 lie well inside)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of lr, in [0, 1]."""
    weight_decay: float = field(
        default=0.1,
        # AdamW multiplies each weight by 1 - lr * weight_decay per step (lr * weight_decay < 1 is checked too)
        metadata=within(
            0, 10, why="the literature's 0 to 1 with room; above it the decay erases the weights"
        ),
    )
    """AdamW weight decay (not applied to biases and norms), in [0, 10], and lr * weight_decay < 1 (AdamW
    multiplies each weight by 1 - lr * weight_decay per step: at 1 that zeroes it)."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay, in [0, 1)."""
    adam_beta2: float = 0.95
    """AdamW's second-moment decay, in [0, 1) (GPT-2/3 practice; PyTorch's own default is 0.999)."""
    adam_eps: float = field(
        default=1e-8,
        # 1e-15 is used at scale (Wortsman et al. 2023). AdamW's step is lr * m / (sqrt(v) + eps): below 1e-20,
        # a gradient whose square underflows float32 (|g| < 1e-22) while m does not gives a step far above lr;
        # above 1, eps outweighs sqrt(v) and AdamW turns into SGD at rate lr / eps.
        metadata=within(
            1e-20, 1, why="below it a tiny gradient's step explodes, above it AdamW stops adapting"
        ),
    )
    """AdamW's epsilon, in [1e-20, 1] (1e-8 by default; 1e-15 to 1e-6 in practice)."""
    warmup_steps: int = 10
    """Linear warm-up steps (>= 0; a warm-up longer than the run keeps the rate below lr throughout)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (>= 0; 0 disables clipping). No upper end: a clip above the
    gradient's norm never acts, and AdamW's step does not depend on the gradient's scale."""
    mixed_precision: str = "no"
    """no, fp16 or bf16 (Accelerate's autocast)."""
    compile: bool = False
    """torch.compile the model."""
    log_every: int = 10
    """Log train metrics (and the liveness window) every this many optimizer steps (>= 1)."""
    eval_every: int = 0
    """Run a validation pass every this many steps (>= 0; 0: only at epoch end)."""
    eval_batches: int | None = None
    """Cap on validation batches per pass (>= 1; None: the whole split)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (>= 0; 0: only at epoch end)."""
    checkpoint_limit: int = 2
    """Keep at most this many checkpoints (>= 1; oldest removed first)."""
    resume: str = "never"
    """never, auto (newest complete checkpoint in output_dir, if any), or a checkpoint directory."""
    resume_data: str = "same"
    """same (a resume refuses data that differs from what its checkpoint trained on, naming what changed) or
    changed (train on the changed data, encoded with the run's own tokenizer, with one warning)."""
    max_bad_steps: int = 0
    """Non-finite loss/gradient steps to skip before stopping (>= 0; 0: stop at the first)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms, for bit-exact resume tests."""
    progress: bool = True
    """Show a progress bar on the main process."""
    plots: bool = True
    """Draw the epoch-end figures and the revival's per-layer figure (plots/ and W&B images; with a task
    sequence, at each task boundary instead).
    false skips them, and the seconds they take, in studies of many small runs: metrics, liveness json and the
    report page (train.report) are written all the same."""
    report: bool = True
    """Write the run's page (report.html) at its end. false skips it and the figures it draws (studies of many
    small runs, the test suite); `reviveformer report RUN` writes it at any time all the same."""

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
                    (
                        # inf or nan: the non-finite check names the key
                        not math.isfinite(self.lr * self.weight_decay) or self.lr * self.weight_decay < 1,
                        f"lr={self.lr} and weight_decay={self.weight_decay}: lr * weight_decay must be < 1 "
                        "(AdamW multiplies each weight by 1 - lr * weight_decay per step: at 1 or above it "
                        "zeroes or flips every weight)",
                    ),
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
                    (
                        self.resume_data in ("same", "changed"),
                        f"resume_data={self.resume_data!r} must be same or changed",
                    ),
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
                        f"steps={show_value(self.steps)} and epochs={show_value(self.epochs)}: give exactly one of them "
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
    """Trips when a layer's metric rises above this, in [0, 1]."""
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
    """Least time between two wandb.alert calls of one rule, >= 0 (inf: one alert per rule for the whole run)."""

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


@functools.cache
def revival_config_class(plugin: type | None = None) -> type:
    """The revival section's schema: the shared keys plus `revival.<name>` for every registered method and
    for `plugin` (a user's Reviver class named by revival.method) when given."""
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
