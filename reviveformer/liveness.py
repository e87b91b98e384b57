"""Neuron liveness: per-unit firing counts at three sites of every GPT-2 block, and the report built from them.

`LivenessMonitor` counts, on the model's device and with no host sync, for each watched site and layer:
how many observed token positions each unit fired on (`fire_count`, int64), the sum of |a| per unit (`abs_sum`,
float64, for the ReDo dormancy score) and the number of observed positions (`tokens`, int64). `report()` sums
the counts over processes and turns them into the design.md `liveness.json` numbers.

How counting is installed (nothing is added to the model's state_dict, its parameter names or its config):
each watched module keeps its identity and gets its class swapped for a counting subclass of its own class
(the site registry, `reviveformer.sites`, says which: `block.mlp.act` -> counts its input, `mlp_pre`, and its
output, `mlp_post`; `block.attn.c_proj` -> counts its output, `attn_out`, before the residual add and dropout).
The subclass only adds a `forward` that calls the original one and counts, so any activation module works, including a user's own with parameters (a wrapper
module would have renamed those parameters). `close()` swaps the original classes back. The counters are plain
tensor attributes, deliberately not buffers: DDP broadcasts buffers from rank 0 on every forward, which would
overwrite each process's own counts, and buffers would end up in saved checkpoints. They follow the model
through `model.to(...)`/`accelerator.prepare` (the counting subclass hooks `_apply`), keeping their dtypes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reviveformer import gpt2, metric_keys
from reviveformer.config import LivenessConfig
from reviveformer.errors import CheckpointError
from reviveformer.sites import MLP_SITE, get_site, site_names

log = logging.getLogger(__name__)

HISTOGRAM_RANGE = 10.0
"""Activation histograms (see `histogram_edges`) reach out to +-HISTOGRAM_RANGE; values beyond it are counted
in the two outermost bins, so every observed value is counted once."""
HISTOGRAM_ZERO_MIN = 1e-6
"""Half-width of the zero bin when liveness.threshold is 0 (a log scale needs a smallest edge above 0)."""
STATE_VERSION = 1

Reduce = Callable[[Tensor], Tensor]

# float32 holds every integer up to here: per-batch fire counts of fewer positions are summed in float32
_FLOAT_EXACT = 2**24


# ---------------------------------------------------------------------------------------------- hot path


def _floor_to_dtype(value: float, dtype: torch.dtype) -> float:
    """The largest `dtype` number <= value (value >= 0), as a Python float.

    For `a` of that dtype, `a > value` (exact, real numbers) is the same as `a > floor`, and `floor` converts
    to the dtype exactly; comparing with `value` itself would first round it to the nearest dtype number,
    which in float32 moves 1e-3 up to 0.00100000005 and drops the activations equal to it."""
    t = torch.tensor(value, dtype=torch.float64).to(dtype)
    if float(t) > value:  # rounded up: step to the next number below (positive, so one less in bit pattern)
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        t = (t.view(ints) - 1).view(dtype)
    return float(t)


def histogram_edges(bins: int, threshold: float) -> np.ndarray:
    """Bin edges of the activation histograms: a zero bin [-z, z] in the middle, with z the liveness
    threshold (under criterion abs it holds exactly the values that do not fire), and `bins // 2` log-spaced
    bins on each side from z out to HISTOGRAM_RANGE, so the spike of near-zero values is resolved (four
    decades at the default threshold) instead of falling into one wide bin. `2 * (bins // 2) + 1` bins (an
    even `bins` gets one more: the zero bin), fixed for a run: histograms of all steps and layers share them.

    A positive bin k is (e[k-1], e[k]], its mirror [-e[k], -e[k-1]); the edges are float32 numbers (the device
    compares float32 values with them), returned as float64 of the same values."""
    z = _floor_to_dtype(threshold, torch.float32) if threshold > 0 else HISTOGRAM_ZERO_MIN
    top = max(HISTOGRAM_RANGE, 10 * z)
    side = np.geomspace(z, top, bins // 2 + 1).astype(np.float32)
    side[0] = np.float32(z)  # exactly the float32 threshold: the zero bin is the "does not fire" set
    return np.concatenate([-side[::-1], side]).astype(np.float64)


class _Probe:
    """The counters of one watched module (one layer; the sites read at that module, e.g. its input and its
    output), and the code that updates them."""

    def __init__(
        self,
        monitor: LivenessMonitor,
        layer: int,
        module: str,
        sites: tuple[str, ...],
        units: tuple[int, ...],
        device: torch.device,
    ) -> None:
        self.monitor = monitor
        self.layer = layer
        self.module = module
        """The module's path in the block (the sites' `Site.module`)."""
        self.sites = sites
        self.reads = tuple(get_site(s).reads for s in sites)
        """Per site, "input" or "output" of the module."""
        self.units = units
        """Per site, its width."""
        self.tokens = torch.zeros(len(sites), dtype=torch.int64, device=device)
        self.fire_count = [torch.zeros(u, dtype=torch.int64, device=device) for u in units]
        self.abs_sum = [torch.zeros(u, dtype=torch.float64, device=device) for u in units]
        bins = monitor.cfg.histogram_bins
        # positive edges of the zero bin and the log-spaced bins (histogram_edges), float32 on the device
        side = histogram_edges(bins, monitor.cfg.threshold)[bins // 2 + 1 :]
        self.hist_edges = torch.tensor(side, dtype=torch.float32, device=device)
        self.hist = [torch.zeros(2 * (bins // 2) + 1, dtype=torch.int64, device=device) for _ in sites]
        self.hist_pending = False  # take a histogram on the next counted forward
        self.hist_taken = False

    def move(self, device: torch.device) -> None:
        if self.tokens.device == device:
            return
        self.tokens = self.tokens.to(device)
        self.fire_count = [t.to(device) for t in self.fire_count]
        self.abs_sum = [t.to(device) for t in self.abs_sum]
        self.hist = [t.to(device) for t in self.hist]
        self.hist_edges = self.hist_edges.to(device)

    @torch.no_grad()
    def count(self, acts: tuple[Tensor, ...]) -> None:
        """Count one forward's activations, `acts[k]` of shape (..., units) for site `self.sites[k]`."""
        mon = self.monitor
        mask = mon._mask
        positions = acts[0].numel() // acts[0].shape[-1]
        if mask is not None:
            if tuple(acts[0].shape[:-1]) != mon._mask_shape:
                raise ValueError(
                    f"liveness attention mask has shape {mon._mask_shape} but layer {self.layer} sees "
                    f"activations of shape {tuple(acts[0].shape)}: call monitor.set_attention_mask with the "
                    "(batch, seq) mask of this batch, or None"
                )
            self.tokens.add_(mon._mask_tokens)
        else:
            self.tokens.add_(positions)
        float_sums = positions < _FLOAT_EXACT
        if float_sums and mon._fused(acts[0]) and not torch.compiler.is_compiling():
            self._count_fused(acts, mask)
            return
        # on CPU, reuse two scratch buffers: a fresh activation-sized tensor there costs page faults that take
        # longer than the op itself (GPU caching allocators make fresh tensors free; compiled code fuses them away)
        scratch = acts[0].device.type == "cpu" and not torch.compiler.is_compiling()
        for k, a in enumerate(acts):
            a = a.reshape(-1, a.shape[-1])  # (positions, units)
            if self.hist_pending:
                self._histogram(k, a, mask)
            if mask is not None:
                # zeroing masked positions is enough: 0 never fires (threshold >= 0) and adds 0 to abs_sum.
                # (a product, 5x faster than where() on CPU; a non-finite padded value would leak NaN into abs_sum)
                a = torch.mul(a, mon._mask_col, out=mon._scratch(1, a)) if scratch else a * mon._mask_col
            absa = torch.abs(a, out=mon._scratch(0, a)) if scratch else a.abs()
            # per-batch sums in float32 (the input stays bf16 under autocast), accumulated in float64
            self.abs_sum[k].add_(absa.sum(dim=0, dtype=torch.float32))
            thr = mon._threshold(a.dtype)
            score = absa if mon._criterion_abs else a
            if float_sums:
                # the comparison written as 1.0/0.0 into absa's memory (no new buffer; abs_sum is taken): on CPU
                # several times faster than a bool result; float32 sums of it are exact below 2**24 positions
                fires = torch.gt(score, thr, out=absa)
                self.fire_count[k].add_(fires.sum(dim=0, dtype=torch.float32).to(torch.int64))
            else:
                self.fire_count[k].add_((score > thr).sum(dim=0, dtype=torch.int32))  # exact below 2**31
        if self.hist_pending:
            self.hist_pending = False
            self.hist_taken = True

    def _count_fused(self, acts: tuple[Tensor, ...], mask: Tensor | None) -> None:
        """The same counts as the reference path above, each site in one compiled pass (see `_count_kernel`)."""
        mon = self.monitor
        kernel = _compiled_kernel()
        for k, a in enumerate(acts):
            a = a.detach().reshape(-1, a.shape[-1])  # detached: one compiled variant for training and eval
            if self.hist_pending:
                self._histogram(k, a, mask)
            fires, abs_sum = kernel(a, mon._mask_col, mon._threshold(a.dtype), mon._criterion_abs)
            self.abs_sum[k].add_(abs_sum)
            self.fire_count[k].add_(fires.to(torch.int64))
        if self.hist_pending:
            self.hist_pending = False
            self.hist_taken = True

    def _histogram(self, k: int, a: Tensor, mask: Tensor | None) -> None:
        # fixed-bin histogram by bucketize and index_add_ (no data-dependent sizes, so no host sync; masked
        # positions weigh 0). |v| is binned on the positive edges, then mirrored by sign around the zero bin.
        side = self.hist_edges.numel() - 1  # bins on each side of the zero bin
        v = a.float().flatten()
        ring = torch.bucketize(v.abs(), self.hist_edges).clamp_(max=side)  # 0: |v| <= threshold
        idx = torch.where(v < 0, side - ring, side + ring)
        if mask is None:
            w = torch.ones_like(idx)
        else:
            w = self.monitor._mask_col.expand(a.shape).flatten().long()
        self.hist[k].index_add_(0, idx, w)


def _count_kernel(
    a: Tensor, mask_col: Tensor | None, threshold: float, abs_criterion: bool
) -> tuple[Tensor, Tensor]:
    """(fires, abs_sum) of one site tensor `a` (positions, units), both float32 (units,): the reference path's
    mask, abs, compare and two sums written as one function, so that torch.compile makes one pass of it.

    float32 sums of 0/1 are exact below 2**24 positions (the caller checks); bf16/fp16 values and their
    dtype-exact threshold are exact in float32, so the comparison is the same as in the input dtype."""
    x = a.float()
    if mask_col is not None:
        x = x * mask_col  # masked positions become 0: never fire, add 0
    absx = x.abs()
    fires = (absx if abs_criterion else x) > threshold
    return fires.sum(dim=0, dtype=torch.float32), absx.sum(dim=0)


_KERNEL: list[Callable[..., tuple[Tensor, Tensor]]] = []


def _compiled_kernel() -> Callable[..., tuple[Tensor, Tensor]]:
    """`_count_kernel` compiled once per process (dynamic shapes: any batch, sequence length or width)."""
    if not _KERNEL:
        _KERNEL.append(torch.compile(_count_kernel, dynamic=True, fullgraph=True))
    return _KERNEL[0]


def fused_counting(counting: str, device: torch.device) -> bool:
    """Whether `liveness.counting` picks the compiled counting kernel on `device`. auto: on GPUs only, where it
    halves the eager ops' cost (GPT-2 124M on an H200: +5% against +10% of a step). On CPU it is faster than
    the reference ops only on cache-resident data (2x on a repeated 2048 x 512 tensor); inside a training
    step at the quickstart size, on activations fresh from a matmul, both take the same time
    (docs/results.md), and compiling it costs seconds per process."""
    return counting == "compiled" or (counting == "auto" and device.type == "cuda")


class _Counting(nn.Module):
    """Base of the counting subclasses: counts the module's watched tensors, and keeps the counters on the device
    the module is moved to."""

    _rf_probe: _Probe

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        out = super()._apply(fn, recurse)
        # learn the target device from an integer probe tensor, which no dtype cast (half, bf16) touches
        try:
            device = fn(torch.empty(0, dtype=torch.int64, device=self._rf_probe.tokens.device)).device
        except Exception:  # an _apply function that is not a move (none in torch today): keep the counters
            return out
        self._rf_probe.move(device)
        return out

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The module's own forward, counting its first input and/or its output as its sites read them."""
        probe = self._rf_probe
        if not probe.monitor._active:
            return super().forward(x, *args, **kwargs)
        reads = probe.reads
        if reads == ("input",):
            probe.count((x,))  # before the module runs: an in-place module (a ReLU) would overwrite x
            return super().forward(x, *args, **kwargs)
        if reads == ("output",):
            y = super().forward(x, *args, **kwargs)
            probe.count((y,))
            return y
        x_seen = x.detach().clone() if _is_inplace(self) else x
        y = super().forward(x, *args, **kwargs)
        probe.count(tuple(x_seen if r == "input" else y for r in reads))
        return y


def _is_inplace(module: nn.Module) -> bool:
    return bool(getattr(module, "inplace", False))


_SUBCLASSES: dict[type, type] = {}


def _counting_class(cls: type) -> type:
    """The counting subclass of `cls` (one per class, so torch.compile sees a stable type)."""
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Counting{cls.__name__}", (_Counting, cls), {"__module__": __name__})
    return _SUBCLASSES[cls]


# ---------------------------------------------------------------------------------------------- report


@dataclass
class LayerLiveness:
    """Liveness of one layer at one site (design.md definitions)."""

    layer: int
    units: int
    fire_count: list[int]
    frequency: list[float]
    dead_ratio: float
    dead_units: list[int]
    dormant_ratio: float
    dormancy: list[float] = field(default_factory=list)
    dormant_units: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The per-layer entry of liveness.json."""
        return {
            "layer": self.layer,
            "units": self.units,
            "fire_count": self.fire_count,
            "frequency": self.frequency,
            "dead_ratio": self.dead_ratio,
            "dead_units": self.dead_units,
            "dormant_ratio": self.dormant_ratio,
            "dormancy": self.dormancy,
            "dormant_units": self.dormant_units,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerLiveness:
        """Read a per-layer entry (`dormancy`/`dormant_units` may be absent in files from elsewhere)."""
        return cls(
            layer=int(d["layer"]),
            units=int(d["units"]),
            fire_count=[int(c) for c in d["fire_count"]],
            frequency=[float(f) for f in d["frequency"]],
            dead_ratio=float(d["dead_ratio"]),
            dead_units=[int(j) for j in d["dead_units"]],
            dormant_ratio=float(d["dormant_ratio"]),
            dormancy=[float(s) for s in d.get("dormancy", [])],
            dormant_units=[int(j) for j in d.get("dormant_units", [])],
        )


def _layer_numbers(
    fire_count: np.ndarray, abs_sum: np.ndarray, tokens: int, dead_frequency: float, tau: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(frequency, dead mask, dormancy score, dormant mask) of one layer, as numpy arrays: the one place the
    design.md definitions are computed, for the full report and the per-log metrics alike."""
    units = fire_count.shape[0]
    frequency = fire_count / tokens if tokens > 0 else np.zeros(units)
    # ReDo dormancy score (Sokar et al. 2023): s[j] = mean_t |a[t,j]| / mean_k mean_t |a[t,k]|; the token counts
    # cancel, so s = abs_sum / mean(abs_sum). A layer whose mean is 0 (silent, or no tokens) scores 0 everywhere.
    layer_mean = abs_sum.mean() if units else 0.0
    score = abs_sum / layer_mean if layer_mean > 0 else np.zeros(units)
    return frequency, frequency < dead_frequency, score, score <= tau


def layer_liveness(
    layer: int, fire_count: np.ndarray, abs_sum: np.ndarray, tokens: int, dead_frequency: float, tau: float
) -> LayerLiveness:
    """One layer's numbers from its (process-summed) counts.

    With `tokens == 0` nothing was observed: every frequency and dormancy score is defined as 0, so the
    rules below call every unit dead (when dead_frequency > 0) and dormant; `report()` warns about it."""
    fire_count = np.asarray(fire_count, dtype=np.int64)
    abs_sum = np.asarray(abs_sum, dtype=np.float64)
    units = int(fire_count.shape[0])
    frequency, dead, score, dormant = _layer_numbers(fire_count, abs_sum, tokens, dead_frequency, tau)
    return LayerLiveness(
        layer=layer,
        units=units,
        fire_count=fire_count.tolist(),
        frequency=frequency.tolist(),
        dead_ratio=int(dead.sum()) / units if units else 0.0,
        dead_units=np.flatnonzero(dead).tolist(),
        dormant_ratio=int(dormant.sum()) / units if units else 0.0,
        dormancy=score.tolist(),
        dormant_units=np.flatnonzero(dormant).tolist(),
    )


@dataclass
class LivenessReport:
    """One liveness measurement: per site, per layer numbers, plus effective capacity (when mlp_post is
    watched). `to_json()` is the design.md `liveness.json` format, with per-layer `dormancy` (ReDo scores)
    and `dormant_units` added. `tokens` is the number of observed positions (the largest count over sites and
    layers; they are all equal when every forward runs the whole model)."""

    tokens: int
    threshold: float
    criterion: str
    dead_frequency: float
    tau: float
    sites: dict[str, list[LayerLiveness]]
    capacity: dict[str, int | float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The liveness.json dict (plain Python types; `capacity` left out when it is None)."""
        d: dict[str, Any] = {
            "tokens": self.tokens,
            "threshold": self.threshold,
            "criterion": self.criterion,
            "dead_frequency": self.dead_frequency,
            "tau": self.tau,
            "sites": {site: [e.to_json() for e in layers] for site, layers in self.sites.items()},
        }
        if self.capacity is not None:
            d["capacity"] = dict(self.capacity)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LivenessReport:
        """Read a liveness.json dict."""
        return cls(
            tokens=int(d["tokens"]),
            threshold=float(d["threshold"]),
            criterion=str(d["criterion"]),
            dead_frequency=float(d["dead_frequency"]),
            tau=float(d["tau"]),
            sites={s: [LayerLiveness.from_json(e) for e in layers] for s, layers in d["sites"].items()},
            capacity=dict(d["capacity"]) if d.get("capacity") is not None else None,
        )

    def metrics(self) -> dict[str, float]:
        """Scalars to log: `liveness/<site>/dead_ratio` (all layers), per-layer dead and dormant ratios, and
        `capacity/<name>`."""
        m: dict[str, float] = {}
        for site, layers in self.sites.items():
            units = sum(e.units for e in layers)
            dead = sum(len(e.dead_units) for e in layers)
            m[metric_keys.dead_ratio_key(site)] = dead / units if units else 0.0
            for e in layers:
                m[metric_keys.layer_key(site, e.layer, metric_keys.DEAD_RATIO)] = float(e.dead_ratio)
                m[metric_keys.layer_key(site, e.layer, metric_keys.DORMANT_RATIO)] = float(e.dormant_ratio)
        for name, value in (self.capacity or {}).items():
            m[metric_keys.capacity_key(name)] = float(value)
        return m

    def frequencies(self) -> dict[str, np.ndarray]:
        """Per site, the firing frequency of every unit, (layers, units) float64."""
        return {
            site: np.array([e.frequency for e in layers], dtype=np.float64)
            for site, layers in self.sites.items()
        }

    def dead_units(self, site: str = MLP_SITE) -> dict[int, list[int]]:
        """Dead units per layer at `site`."""
        if site not in self.sites:
            raise ValueError(f"the liveness report has no site {site!r} (it has {', '.join(self.sites)})")
        return {e.layer: list(e.dead_units) for e in self.sites[site]}


@dataclass
class LivenessCounts:
    """The process-summed counters of one window, on the host as numpy arrays: what every liveness output is
    computed from. `metrics()` (each train log) works on the arrays; `report()` builds the per-unit lists
    of liveness.json, only where they are written or acted on (epoch end, audit, strip, revival).

    Per site: `fire_count` (layers, units) int64, `abs_sum` (layers, units) float64, `tokens` (layers,) int64."""

    cfg: LivenessConfig
    fire_count: dict[str, np.ndarray]
    abs_sum: dict[str, np.ndarray]
    tokens: dict[str, np.ndarray]
    capacity: dict[str, int | float] | None = None

    @property
    def max_tokens(self) -> int:
        return max((int(t.max(initial=0)) for t in self.tokens.values()), default=0)

    def _layers(self, site: str) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """(layer, frequency, dead mask, score, dormant mask) of each layer of a site."""
        for i, (fire, abs_sum, tokens) in enumerate(
            zip(self.fire_count[site], self.abs_sum[site], self.tokens[site], strict=True)
        ):
            yield i, *_layer_numbers(fire, abs_sum, int(tokens), self.cfg.dead_frequency, self.cfg.tau)

    def frequencies(self) -> dict[str, np.ndarray]:
        """Per site, the firing frequency of every unit, (layers, units) float64."""
        return {site: np.stack([f for _, f, *_ in self._layers(site)]) for site in self.fire_count}

    def metrics(self) -> dict[str, float]:
        """The same scalars as `LivenessReport.metrics()`, without building per-unit lists."""
        m: dict[str, float] = {}
        for site, fire in self.fire_count.items():
            units = fire.shape[1]
            per_layer = {
                i: (int(dead.sum()), int(dormant.sum())) for i, _, dead, _, dormant in self._layers(site)
            }
            total = units * len(per_layer)
            dead_all = sum(d for d, _ in per_layer.values())
            m[metric_keys.dead_ratio_key(site)] = dead_all / total if total else 0.0
            for i, (dead, dormant) in per_layer.items():
                m[metric_keys.layer_key(site, i, metric_keys.DEAD_RATIO)] = dead / units if units else 0.0
                m[metric_keys.layer_key(site, i, metric_keys.DORMANT_RATIO)] = (
                    dormant / units if units else 0.0
                )
        for name, value in (self.capacity or {}).items():
            m[metric_keys.capacity_key(name)] = float(value)
        return m

    def report(self) -> LivenessReport:
        """The full report (per-unit lists, the liveness.json format)."""
        if self.max_tokens == 0:  # (an empty training window is skipped by its caller, not reported)
            log.warning("liveness report over 0 observed tokens: every unit counts as dead and dormant")
        sites = {
            site: [
                layer_liveness(
                    i,
                    fire[i],
                    self.abs_sum[site][i],
                    int(self.tokens[site][i]),
                    self.cfg.dead_frequency,
                    self.cfg.tau,
                )
                for i in range(fire.shape[0])
            ]
            for site, fire in self.fire_count.items()
        }
        return LivenessReport(
            tokens=self.max_tokens,
            threshold=self.cfg.threshold,
            criterion=self.cfg.criterion,
            dead_frequency=self.cfg.dead_frequency,
            tau=self.cfg.tau,
            sites=sites,
            capacity=self.capacity,
        )


def capacity(
    model: nn.Module, dead_units: dict[int, list[int]], pruned_masks: dict[int, Tensor] | None = None
) -> dict[str, int | float]:
    """Effective capacity (design.md): alive MLP units, and trainable parameters minus those that belong only
    to dead MLP units (c_fc.weight[:, j], c_fc.bias[j], c_proj.weight[j, :]) minus pruned weights outside
    those columns. `pruned_masks[i]` is a bool tensor shaped like `h[i].mlp.c_fc.weight`, True = pruned.
    `model` may be wrapped (DDP, torch.compile)."""
    mlps = gpt2.mlps(model)
    pruned = {}
    for i, mask in (pruned_masks or {}).items():
        weight = mlps[i].c_fc.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"pruned mask of layer {i} has shape {tuple(mask.shape)}, c_fc.weight {tuple(weight.shape)}"
            )
        pruned[i] = gpt2.by_unit(mask).sum(dim=1).cpu().numpy()
    return _capacity(model, dead_units, pruned)


def _capacity(
    model: nn.Module, dead_units: dict[int, Any], pruned_per_unit: dict[int, np.ndarray]
) -> dict[str, int | float]:
    """`capacity` from the number of pruned weights in each unit's c_fc column (layer -> (units,) ints);
    `dead_units[i]`: unit indices of layer i, a list or an integer array."""
    model = gpt2.unwrap(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    all_units = alive = 0
    effective = trainable
    for i, mlp in enumerate(gpt2.mlps(model)):
        units = gpt2.mlp_units(mlp)
        listed = np.asarray(dead_units.get(i, []), dtype=np.int64)
        if listed.size and not (0 <= listed.min() and listed.max() < units):
            raise ValueError(
                f"dead unit indices {listed.min()}..{listed.max()} out of range for {units} units in layer {i}"
            )
        dead = np.zeros(units, dtype=bool)
        dead[listed] = True  # a unit listed twice counts once
        n_dead = int(dead.sum())
        all_units += units
        alive += units - n_dead
        effective -= gpt2.per_unit_parameters(mlp) * n_dead
        pruned = pruned_per_unit.get(i)
        if pruned is not None and mlp.c_fc.weight.requires_grad:
            effective -= int(pruned[~dead].sum())  # pruned weights of dead units are already subtracted
    return {
        "alive_units": alive,
        "alive_fraction": alive / all_units if all_units else 0.0,
        "effective_params": effective,
        "effective_param_fraction": effective / trainable if trainable else 0.0,
    }


# ---------------------------------------------------------------------------------------------- monitor


class LivenessMonitor:
    """Counts per-unit firing at the configured sites of every block of a GPT-2 model (see module docstring).

    Install on the model before or after wrapping it (DDP, torch.compile: the wrapped model is unwrapped);
    `close()` removes everything. `report()` is a collective when given a `reduce`: call it on every process.

    What the caller does: `set_attention_mask` for every batch that has padding (None, the default, counts every
    position); `reset()` (or `fresh_window()`) to start a window; `begin_step(step)` before the forwards of each
    training step, which applies the monitor's own sampling (`liveness.sample_every`) and histogram cadence
    (`liveness.histogram_every`); `paused()` around forwards that must not count (a validation loss inside a
    training window), `counting()` around a measurement; `request_histogram()` for one histogram. Every forward
    of the model counts while `active`, so activation checkpointing (which re-runs forwards in backward) would
    count its blocks twice."""

    def __init__(self, model: nn.Module, cfg: LivenessConfig) -> None:
        model = gpt2.unwrap(model)
        self.model = model
        self.cfg = cfg
        self.sites = tuple(s for s in site_names() if s in cfg.sites)
        self._active = True
        self._criterion_abs = cfg.criterion == "abs"
        # exact `a > threshold` per activation dtype (see _floor_to_dtype); filled for the usual dtypes up front
        self._thresholds = {
            dt: _floor_to_dtype(cfg.threshold, dt)
            for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
        }
        self._mask: Tensor | None = None
        self._mask_col: Tensor | None = None
        self._mask_tokens: Tensor | None = None
        self._mask_shape: tuple[int, ...] = ()
        self._scratch_buffers: dict[tuple[int, torch.dtype], Tensor] = {}
        self._installed: list[tuple[nn.Module, type]] = []
        self._probes: dict[str, list[_Probe]] = {s: [] for s in self.sites}

        blocks = gpt2.blocks(model)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        by_module: dict[str, list[str]] = {}  # module path -> its watched sites, in registry order
        for s in self.sites:
            by_module.setdefault(get_site(s).module, []).append(s)
        targets: list[tuple[nn.Module, int, str, tuple[str, ...], tuple[int, ...]]] = []
        for i, block in enumerate(blocks):
            for path, names in by_module.items():
                widths = tuple(gpt2.width(block, get_site(s).units) for s in names)
                targets.append((gpt2.block_module(block, path, i), i, path, tuple(names), widths))
        seen: set[int] = set()
        for module, i, _, _, _ in targets:
            if isinstance(module, _Counting):
                raise ValueError(f"block {i} is already watched by a LivenessMonitor: close() that one first")
            if id(module) in seen:
                raise ValueError(
                    f"block {i} shares its module {type(module).__name__} with another block; "
                    "liveness needs one module per block"
                )
            seen.add(id(module))
        for module, i, path, sites, units in targets:
            probe = _Probe(self, i, path, sites, units, device)
            original = type(module)
            module.__class__ = _counting_class(original)
            module._rf_probe = probe  # a plain attribute: not a parameter, buffer or submodule
            self._installed.append((module, original))
            for s in sites:
                self._probes[s].append(probe)

    # ------------------------------------------------------------------ hot-path settings
    def _fused(self, a: Tensor) -> bool:
        # float64 stays on the reference path: the kernel sums in float32
        return a.dtype != torch.float64 and fused_counting(self.cfg.counting, a.device)

    def _threshold(self, dtype: torch.dtype) -> float:
        thr = self._thresholds.get(dtype)
        if thr is None:
            thr = self._thresholds[dtype] = _floor_to_dtype(self.cfg.threshold, dtype)
        return thr

    def _scratch(self, i: int, like: Tensor) -> Tensor:
        """Scratch buffer `i` shaped and typed like `like` (reallocated only when a larger one is needed)."""
        buf = self._scratch_buffers.get((i, like.dtype))
        if buf is None or buf.numel() < like.numel() or buf.device != like.device:
            buf = self._scratch_buffers[(i, like.dtype)] = torch.empty(
                like.numel(), dtype=like.dtype, device=like.device
            )
        return buf[: like.numel()].view(like.shape)

    def set_attention_mask(self, mask: Tensor | None) -> None:
        """The (batch, seq) mask of the next forwards, 1 = real token, 0 = padding (not counted); None: every
        position counts. Stays in effect until changed, so set it for every batch of padded data."""
        if mask is None:
            self._mask = self._mask_col = self._mask_tokens = None
            self._mask_shape = ()
            return
        if mask.dim() != 2:
            raise ValueError(f"attention mask must have shape (batch, seq), got {tuple(mask.shape)}")
        device = self._device()
        self._mask = mask.to(device=device, non_blocking=True) != 0
        self._mask_col = self._mask.reshape(-1, 1)
        self._mask_tokens = self._mask.sum()
        self._mask_shape = tuple(mask.shape)

    # ------------------------------------------------------------------ when to count
    @property
    def active(self) -> bool:
        """When False, the counting modules pass activations through without counting."""
        return self._active

    @contextlib.contextmanager
    def _activity(self, active: bool) -> Iterator[LivenessMonitor]:
        was, self._active = self._active, active
        try:
            yield self
        finally:
            self._active = was

    def paused(self) -> contextlib.AbstractContextManager[LivenessMonitor]:
        """Forwards inside do not count (a validation loss must not add its tokens to the training window)."""
        return self._activity(False)

    def counting(self) -> contextlib.AbstractContextManager[LivenessMonitor]:
        """Forwards inside count, whatever the sampling left set (a measurement always counts)."""
        return self._activity(True)

    def sampled(self, step: int) -> bool:
        """Whether training step `step` (1-based) is counted: one step in `liveness.sample_every`."""
        return self.cfg.sample_every <= 1 or step % self.cfg.sample_every == 0

    def histogram_due(self, step: int) -> bool:
        """Whether training step `step` takes an activation histogram (`liveness.histogram_every`, 0: never)."""
        return bool(self.cfg.histogram_every) and step % self.cfg.histogram_every == 0

    def begin_step(self, step: int) -> None:
        """Before the forwards of training step `step` (1-based): count it if sampled, and request a histogram
        of its activation values if one is due."""
        self._active = self.sampled(step)
        if self.histogram_due(step):
            self.request_histogram()

    def request_histogram(self) -> None:
        """Take a histogram of activation values on the next counted forward (read it with `histograms`)."""
        for p in self._all_probes():
            p.hist_pending = True

    @property
    def histogram_next(self) -> bool:
        """Whether a histogram is requested and not yet taken."""
        return any(p.hist_pending for p in self._all_probes())

    # ------------------------------------------------------------------ windows and state
    def _all_probes(self) -> list[_Probe]:
        seen: dict[int, _Probe] = {}
        for probes in self._probes.values():
            for p in probes:
                seen.setdefault(id(p), p)
        return list(seen.values())

    def _device(self) -> torch.device:
        probes = self._all_probes()
        return probes[0].tokens.device if probes else torch.device("cpu")

    def to(self, device: torch.device | str) -> LivenessMonitor:
        """Move the counters (model.to() and accelerator.prepare already move them along with the model)."""
        for p in self._all_probes():
            p.move(torch.device(device))
        return self

    def reset(self) -> None:
        """Zero all counters (in place: a compiled model keeps its graph)."""
        for p in self._all_probes():
            p.tokens.zero_()
            for t in (*p.fire_count, *p.abs_sum):
                t.zero_()

    @contextlib.contextmanager
    def fresh_window(self) -> Iterator[LivenessMonitor]:
        """Count a separate window (e.g. a validation pass): saves the counters, zeroes them, yields, and puts
        the saved ones back, so the training window in progress is not disturbed."""
        saved = [[t.clone() for t in (p.tokens, *p.fire_count, *p.abs_sum)] for p in self._all_probes()]
        self.reset()
        try:
            yield self
        finally:
            for p, ts in zip(self._all_probes(), saved, strict=True):
                for dst, src in zip((p.tokens, *p.fire_count, *p.abs_sum), ts, strict=True):
                    dst.copy_(src)

    def _units(self, site: str, layer: int) -> int:
        p = self._probes[site][layer]
        return p.units[p.sites.index(site)]

    def _stacked(self, site: str) -> tuple[Tensor, Tensor, Tensor]:
        """(fire_count (L, U) int64, abs_sum (L, U) float64, tokens (L,) int64) of a site, on the device."""
        probes = self._probes[site]
        ks = [p.sites.index(site) for p in probes]
        return (
            torch.stack([p.fire_count[k] for p, k in zip(probes, ks, strict=True)]),
            torch.stack([p.abs_sum[k] for p, k in zip(probes, ks, strict=True)]),
            torch.stack([p.tokens[k] for p, k in zip(probes, ks, strict=True)]),
        )

    def state_dict(self) -> dict[str, Any]:
        """The counters as CPU tensors: {"version", "sites": {site: {"fire_count", "abs_sum", "tokens"}}}."""
        self._check_installed()
        sites = {}
        for site in self.sites:
            fire, abs_sum, tokens = self._stacked(site)
            sites[site] = {"fire_count": fire.cpu(), "abs_sum": abs_sum.cpu(), "tokens": tokens.cpu()}
        return {"version": STATE_VERSION, "sites": sites}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by `state_dict` (onto the counters' current device)."""
        self._check_installed()
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"liveness monitor state has version {got}, this reviveformer reads {STATE_VERSION}"
            )
        sites = state.get("sites")
        if not isinstance(sites, dict) or set(sites) != set(self.sites):
            have = sorted(sites) if isinstance(sites, dict) else "none"
            raise CheckpointError(
                f"liveness monitor state has sites {have} but liveness.sites is {list(self.sites)}; resume with the "
                "same liveness.sites as the checkpoint"
            )
        for site in self.sites:
            probes = self._probes[site]
            entry = sites[site]
            want = {
                "fire_count": (len(probes), probes[0].units[probes[0].sites.index(site)]),
                "abs_sum": (len(probes), probes[0].units[probes[0].sites.index(site)]),
                "tokens": (len(probes),),
            }
            for key, shape in want.items():
                t = entry.get(key)
                if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise CheckpointError(
                        f"liveness monitor state {site}.{key} has shape {got}, this model needs {shape}"
                    )
            for layer, p in enumerate(probes):
                k = p.sites.index(site)
                p.fire_count[k].copy_(entry["fire_count"][layer])
                p.abs_sum[k].copy_(entry["abs_sum"][layer])
                p.tokens[k].copy_(entry["tokens"][layer])

    # ------------------------------------------------------------------ outputs
    def histograms(self) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        """Histograms taken since the last call, {(site, layer): (counts int64 (bins,), edges (bins + 1,))},
        on the run's fixed `histogram_edges`; clears them."""
        edges = histogram_edges(self.cfg.histogram_bins, self.cfg.threshold)
        out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for p in self._all_probes():
            if not p.hist_taken:
                continue
            for site, h in zip(p.sites, p.hist, strict=True):
                out[(site, p.layer)] = (h.cpu().numpy().copy(), edges.copy())
                h.zero_()
            p.hist_taken = False
        order = site_names()
        return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])))

    def counts(
        self, reduce: Reduce | None = None, pruned_masks: dict[int, Tensor] | None = None
    ) -> LivenessCounts:
        """Sum the counters over processes (`reduce`: a sum over processes, e.g.
        `lambda t: accelerator.reduce(t, "sum")`; None for one process) and bring them to the host.

        Everything travels in one flat float64 tensor, reduced once and copied to the host once, whatever the
        model size: the counts (int64 on the device; float64 holds every integer below 2**53 exactly, so they
        come back exact), the |a| sums, and (not reduced: the same on every process) the pruned weights per MLP
        unit that capacity needs. Capacity needs site mlp_post and is None without it."""
        self._check_installed()
        parts, layout = [], []
        for site in self.sites:
            fire, abs_sum, tokens = self._stacked(site)
            parts += [fire.flatten(), tokens, abs_sum.flatten()]
            layout.append((site, *fire.shape))
        flat = torch.cat([t.to(torch.float64) for t in parts])
        if reduce is not None:
            flat = reduce(flat)
        masks = pruned_masks or {}
        if masks and MLP_SITE in self.sites:
            units = self._units(MLP_SITE, 0)
            bad = {
                i: tuple(m.shape)
                for i, m in masks.items()
                if m.dim() != 2 or gpt2.by_unit(m).shape[0] != units
            }
            if bad:
                raise ValueError(f"pruned masks must be shaped like c_fc.weight ({units} units); got {bad}")
            flat = torch.cat(
                [
                    flat,
                    *(
                        gpt2.by_unit(masks[i]).sum(dim=1, dtype=torch.float64).to(flat.device)
                        for i in sorted(masks)
                    ),
                ]
            )
        host = flat.cpu().numpy()

        fire_count, abs_sums, tokens_of, at = {}, {}, {}, 0

        def take(n: int) -> np.ndarray:
            nonlocal at
            at += n
            return host[at - n : at]

        for site, n_layer, units in layout:
            fire_count[site] = np.rint(take(n_layer * units)).astype(np.int64).reshape(n_layer, units)
            tokens_of[site] = np.rint(take(n_layer)).astype(np.int64)
            abs_sums[site] = take(n_layer * units).reshape(n_layer, units)
        counts = LivenessCounts(self.cfg, fire_count, abs_sums, tokens_of)
        if MLP_SITE in self.sites:
            pruned = {i: np.rint(take(self._units(MLP_SITE, i))) for i in sorted(masks)}
            dead = {i: np.flatnonzero(d) for i, _, d, _, _ in counts._layers(MLP_SITE)}
            counts.capacity = _capacity(self.model, dead, pruned)
        return counts

    def report(
        self, reduce: Reduce | None = None, pruned_masks: dict[int, Tensor] | None = None
    ) -> LivenessReport:
        """The full liveness report of the window (see `counts` for `reduce`, `pruned_masks`): a collective
        when given a `reduce`, so call it on every process."""
        return self.counts(reduce, pruned_masks).report()

    def _check_installed(self) -> None:
        if not self._installed:
            raise ValueError("this LivenessMonitor is closed; create a new one")
        # a module swapped after installation (e.g. activations.set_activation) would silently count nothing
        blocks = gpt2.blocks(self.model)
        for module, _ in self._installed:
            p = module._rf_probe
            current = gpt2.block_module(blocks[p.layer], p.module, p.layer)
            if current is not module:
                raise ValueError(
                    f"transformer.h[{p.layer}] no longer holds the module the liveness monitor watches (was it "
                    "replaced, e.g. by an activation swap, after the monitor was installed?); close() the monitor "
                    "and create a new one after changing the model"
                )

    def close(self) -> None:
        """Remove the counting: every watched module gets its own class back and loses its counters."""
        for module, original in reversed(self._installed):
            module.__class__ = original
            module.__dict__.pop("_rf_probe", None)
        self._installed.clear()
        self._probes = {s: [] for s in self.sites}
        self._mask = self._mask_col = self._mask_tokens = None
        self._scratch_buffers.clear()

    def __enter__(self) -> LivenessMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
