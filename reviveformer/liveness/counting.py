"""What runs in the forward: the per-module counters (`_Probe`), the counting subclasses that call them, the
compiled count kernel and `fused_counting`, the dtype-exact threshold, and the histogram bin edges.

How counting is installed (nothing is added to the model's state_dict, its parameter names or its config):
each watched module keeps its identity and gets its class swapped for a counting subclass of its own class
(the model's architecture says which, `reviveformer.architectures`: in GPT-2, the MLP activation counts its
input, `mlp_pre`, and its output, `mlp_post`; the attention's output projection counts its output, `attn_out`,
before the residual add and dropout).
The subclass only adds a `forward` that calls the original one and counts, so any activation module works,
including a user's own with parameters (a wrapper module would have renamed those parameters).
`LivenessMonitor.close()` swaps the original classes back. The counters live in one flat float64 tensor per
monitor (the layout `LivenessMonitor.counts` ships: one snapshot, reduce and copy per log whatever the model
size), and a probe holds views into it that the forward updates in place (and views into a second flat int64
tensor for the activation histograms). Both are plain tensor attributes, deliberately not buffers: DDP
broadcasts buffers from rank 0 on every forward, which would overwrite each process's own counts, and buffers
would end up in saved checkpoints. They follow the model through `model.to(...)`/`accelerator.prepare` (the
counting subclass hooks `_apply`, and the monitor moves its flat tensors and rebuilds the views).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HISTOGRAM_RANGE = 10.0
"""Activation histograms (see `histogram_edges`) reach out to +-HISTOGRAM_RANGE; values beyond it are counted
in the two outermost bins, so every observed value is counted once."""
HISTOGRAM_ZERO_MIN = 1e-6
"""Half-width of the zero bin when liveness.threshold is 0 (a log scale needs a smallest edge above 0)."""

# float32 holds every integer up to here: per-batch fire counts of fewer positions are summed in float32
_FLOAT_EXACT = 2**24


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
    output), and the code that updates them. The counters are views into the monitor's flat tensors, bound by
    `LivenessMonitor._bind` (again after every move); the forward adds into them in place."""

    def __init__(
        self,
        monitor: Any,  # the LivenessMonitor that holds this probe; it reads its settings and flags
        layer: int,
        module: str,
        sites: tuple[str, ...],
        reads: tuple[str, ...],
        units: tuple[int, ...],
    ) -> None:
        self.monitor = monitor
        self.layer = layer
        self.module = module
        """The module's path in the block (where the architecture reads the sites, `site_location`)."""
        self.sites = sites
        self.reads = reads
        """Per site, "input" or "output" of the module."""
        self.units = units
        """Per site, its width."""
        # per site: observed positions (1,), fires per unit (units,), sum of |a| per unit (units,), all float64
        # (every integer below 2**53 is exact), and the activation histogram (bins,) int64
        self.tokens: list[Tensor] = []
        self.fire_count: list[Tensor] = []
        self.abs_sum: list[Tensor] = []
        self.hist: list[Tensor] = []
        self.hist_pending = False  # take a histogram on the next counted forward
        self.hist_taken = False

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
            seen: Tensor | int = mon._mask_tokens
        else:
            seen = positions
        for tokens in self.tokens:
            tokens.add_(seen)
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
                self.fire_count[k].add_(fires.sum(dim=0, dtype=torch.float32))  # into float64: exact
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
            self.fire_count[k].add_(fires)
        if self.hist_pending:
            self.hist_pending = False
            self.hist_taken = True

    def _histogram(self, k: int, a: Tensor, mask: Tensor | None) -> None:
        # fixed-bin histogram by bucketize and index_add_ (no data-dependent sizes, so no host sync; masked
        # positions weigh 0). |v| is binned on the positive edges, then mirrored by sign around the zero bin.
        edges = self.monitor._hist_edges
        side = edges.numel() - 1  # bins on each side of the zero bin
        v = a.float().flatten()
        ring = torch.bucketize(v.abs(), edges).clamp_(max=side)  # 0: |v| <= threshold
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
        monitor = self._rf_probe.monitor
        try:
            device = fn(torch.empty(0, dtype=torch.int64, device=monitor._device())).device
        except Exception:  # an _apply function that is not a move (none in torch today): keep the counters
            return out
        monitor._move(device)  # the first watched module moves the flat tensors; the others find them there
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
