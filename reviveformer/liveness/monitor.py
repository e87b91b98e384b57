"""`LivenessMonitor`: installs the counting on a model, decides when it counts (sampling, pauses, windows,
histogram cadence), saves and restores the counters, and sums them over processes into `LivenessCounts`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reviveformer import architecture
from reviveformer.errors import CheckpointError
from reviveformer.liveness.counting import (
    _Counting,
    _counting_class,
    _floor_to_dtype,
    _Probe,
    fused_counting,
    histogram_edges,
)
from reviveformer.liveness.effective_capacity import _capacity
from reviveformer.liveness.options import LivenessConfig
from reviveformer.liveness.report import LivenessCounts, LivenessReport
from reviveformer.sites import MLP_SITE, get_site, site_names

STATE_VERSION = 1

Reduce = Callable[[Tensor], Tensor]


class LivenessMonitor:
    """Counts per-unit firing at the configured sites of every block of a GPT-2 model (see the docstrings of
    `reviveformer.liveness` and `reviveformer.liveness.counting`).

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
        model = architecture.unwrap(model)
        self.model = model
        self.arch = architecture.of(model)
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

        blocks = self.arch.blocks(model)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        # module path -> its watched sites, in registry order; where a site is read is the architecture's
        by_module: dict[str, list[str]] = {}
        reads: dict[str, str] = {}
        for s in self.sites:
            path, reads[s] = self.arch.site_location(s)
            by_module.setdefault(path, []).append(s)
        targets: list[tuple[nn.Module, int, str, tuple[str, ...], tuple[int, ...]]] = []
        for i, block in enumerate(blocks):
            for path, names in by_module.items():
                widths = tuple(self.arch.width(block, get_site(s).units) for s in names)
                targets.append((self.arch.block_module(block, path, i), i, path, tuple(names), widths))
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
            probe = _Probe(self, i, path, sites, tuple(reads[s] for s in sites), units, device)
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
            # a stripping mask is laid out like the unit's first incoming weight (stripping.py)
            by_unit = self.arch.incoming_weights(self.arch.mlps(self.model)[0])[0].by_unit
            bad = {
                i: tuple(m.shape) for i, m in masks.items() if m.dim() != 2 or by_unit(m).shape[0] != units
            }
            if bad:
                raise ValueError(f"pruned masks must be shaped like c_fc.weight ({units} units); got {bad}")
            flat = torch.cat(
                [
                    flat,
                    *(
                        by_unit(masks[i]).sum(dim=1, dtype=torch.float64).to(flat.device)
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
        blocks = self.arch.blocks(self.model)
        for module, _ in self._installed:
            p = module._rf_probe
            current = self.arch.block_module(blocks[p.layer], p.module, p.layer)
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
