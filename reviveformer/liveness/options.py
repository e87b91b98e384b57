"""The `liveness` section of the config: what the monitor counts and how (docs/design.md, "Liveness: the
definitions"). It lives with the monitor, below `reviveformer.config`, which assembles every section into the
recipe schema: the liveness code never imports the config tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from reviveformer.architectures import site_names
from reviveformer.errors import failed_checks as _problems
from reviveformer.errors import raise_problems as _raise
from reviveformer.ranges import within

CRITERIA = ("abs", "positive")
COUNTING = ("auto", "eager", "compiled")


@dataclass
class LivenessConfig:
    """What a `LivenessMonitor` counts and how: the recipe's `liveness` section (docs/design.md, "Liveness: the
    definitions"). Every field is optional; a bad value is a ValueError naming `liveness.<field>` and what is
    valid."""

    enabled: bool = True
    """Count firing per unit during training and at epoch end."""
    sites: list[str] = field(default_factory=lambda: list(site_names()))
    """Sites to watch (reviveformer.architectures): mlp_pre, mlp_post, attn_out."""
    threshold: float = field(
        default=1e-3,
        # a LayerNorm'd block's activations are of order 1 (the histograms reach out to +-10); 1e3 is also far
        # below float16's largest value (65504), past which a float16 comparison would count nothing
        metadata=within(0, 1e3, why="above it every unit of a trained model reads as dead"),
    )
    """A unit fires on a token when |a| > threshold (abs) or a > threshold (positive); in [0, 1e3] (0 to 1e-2 in
    the literature)."""
    criterion: str = "abs"
    """abs or positive."""
    dead_frequency: float = 1e-3
    """A unit is dead when its firing frequency is below this; in [0, 1] (0: no unit is ever dead)."""
    tau: float = field(
        default=0.1,
        # the score is |a| over its layer's mean, so the scores of a layer average 1
        metadata=within(0, 1, high_open=True, why="at 1 or above even an evenly used layer reads as dormant"),
    )
    """A unit is dormant when its normalised mean |a| (ReDo score) is <= tau; in [0, 1) (ReDo: 0 to 0.1)."""
    sample_every: int = 1
    """During training, count on one optimizer step in this many (>= 1, at most train.log_every; 1: every
    step). The training windows then hold fewer tokens, for less hot-path cost; epoch-end, audit and strip
    measurements count every token."""
    histogram_every: int = 0
    """Every this many steps, log a histogram of activation values per site and layer (>= 0; 0: never)."""
    histogram_bins: int = field(
        default=64,
        # the histogram has 2 * (bins // 2) + 1 bins, and wandb.Histogram refuses more than 512
        metadata=within(2, 511, why="W&B keeps at most 512 bins per histogram"),
    )
    """Log-spaced bins of that histogram, half each side of a zero bin as wide as the threshold (design.md); in
    [2, 511]."""
    frequency_histogram_every: int = 0
    """Every this many steps, also log W&B histograms of per-unit firing frequency (per site and layer) at the
    train log that reaches it (>= 0; 0: only at epoch end). Scalars are logged at every train log."""
    counting: str = "auto"
    """How to count on the hot path: eager (the reference ops), compiled (one torch.compile'd pass per site,
    compiled once per process), or auto (compiled on GPUs, eager on CPU, where the kernel measured no faster
    inside a training step and compiling it costs seconds). Every choice counts the same integers."""

    def __post_init__(self) -> None:
        bad_sites = [s for s in self.sites if s not in site_names()]
        _raise(
            "liveness",
            _problems(
                [
                    (
                        not bad_sites and len(self.sites) > 0,
                        f"sites={list(self.sites)} must be a non-empty subset of {', '.join(site_names())}",
                    ),
                    (self.threshold >= 0, f"threshold={self.threshold} must be >= 0"),
                    (
                        self.criterion in CRITERIA,
                        f"criterion={self.criterion!r} must be one of {', '.join(CRITERIA)}",
                    ),
                    (
                        0.0 <= self.dead_frequency <= 1.0,
                        f"dead_frequency={self.dead_frequency} must be in [0, 1]",
                    ),
                    (self.tau >= 0, f"tau={self.tau} must be >= 0"),
                    (self.sample_every >= 1, f"sample_every={self.sample_every} must be >= 1"),
                    (self.histogram_every >= 0, f"histogram_every={self.histogram_every} must be >= 0"),
                    (self.histogram_bins >= 2, f"histogram_bins={self.histogram_bins} must be >= 2"),
                    (
                        self.frequency_histogram_every >= 0,
                        f"frequency_histogram_every={self.frequency_histogram_every} must be >= 0",
                    ),
                    (
                        self.counting in COUNTING,
                        f"counting={self.counting!r} must be one of {', '.join(COUNTING)}",
                    ),
                ]
            ),
        )
