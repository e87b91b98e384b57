"""`LivenessMonitor`: installs the counting on a model, decides when it counts (sampling, pauses, windows,
histogram cadence), saves and restores the counters, and sums them over processes into `LivenessCounts`:
at once (`counts`, a host sync) or on the way (`snapshot` -> `PendingCounts`, read later without a sync of
its own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from reviveformer import architectures
from reviveformer.architectures import MLP_SITE, get_site, site_names
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

STATE_VERSION = 1

Reduce = Callable[[Tensor], Tensor]


class LivenessMonitor:
    """Counts per-unit firing at the configured sites of every block of a model (see the docstrings of
    `reviveformer.liveness` and `reviveformer.liveness.counting`).

    Install on the model before or after wrapping it (DDP, torch.compile: the wrapped model is unwrapped);
    `close()` removes everything. `report()` is a collective when given a `reduce`, and `snapshot()` when asked
    to sum over processes: call them on every process.

    What the caller does: `set_attention_mask` for every batch that has padding (None, the default, counts every
    position); `reset()` (or `fresh_window()`) to start a window; `begin_step(step)` before the forwards of each
    training step, which applies the monitor's own sampling (`liveness.sample_every`) and histogram cadence
    (`liveness.histogram_every`); `paused()` around forwards that must not count (a validation loss inside a
    training window), `counting()` around a measurement; `request_histogram()` for one histogram; `counts()`
    to read a window now (a host sync), or `snapshot()` to close it and read it later. Every forward
    of the model counts while `active`, so activation checkpointing (which re-runs forwards in backward) would
    count its blocks twice."""

    def __init__(self, model: nn.Module, cfg: LivenessConfig) -> None:
        model = architectures.unwrap(model)
        self.model = model
        self.arch = architectures.of(model)
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

        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self._install(self._targets(model))
        self._allocate(device)
        self._bind()

    def _targets(self, model: nn.Module) -> list[tuple[nn.Module, int, _Probe]]:
        """The module of each block that the watched sites are read from, with its probe; refused when a block
        is watched already or shares that module with another block."""
        blocks = self.arch.blocks(model)
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
        return [
            (module, i, _Probe(self, i, path, sites, tuple(reads[s] for s in sites), units))
            for module, i, path, sites, units in targets
        ]

    def _install(self, targets: list[tuple[nn.Module, int, _Probe]]) -> None:
        """Make each target module count through its probe (its class swapped for a counting subclass)."""
        for module, _, probe in targets:
            sites = probe.sites
            original = type(module)
            module.__class__ = _counting_class(original)
            module._rf_probe = probe  # a plain attribute: not a parameter, buffer or submodule
            self._installed.append((module, original))
            for s in sites:
                self._probes[s].append(probe)

    def _allocate(self, device: torch.device) -> None:
        """The flat counters and histograms on `device`, laid out per site."""
        cfg = self.cfg
        # the flat layout of the counters, per site in registry order: fire counts (layers * units), tokens
        # (layers), |a| sums (layers * units); `counts` ships exactly this tensor
        self._layout: dict[str, tuple[int, int, int]] = {}
        """site -> (offset, layers, units)."""
        at = 0
        for s in self.sites:
            layers = len(self._probes[s])
            units = self._units(s, 0) if layers else 0
            self._layout[s] = (at, layers, units)
            at += layers * (2 * units + 1)
        self._counters = torch.zeros(at, dtype=torch.float64, device=device)
        bins = cfg.histogram_bins
        n_hists = sum(len(p.sites) for p in self._all_probes())
        self._hists = torch.zeros(n_hists * (2 * (bins // 2) + 1), dtype=torch.int64, device=device)
        # positive edges of the zero bin and the log-spaced bins (histogram_edges), float32 on the device
        side = histogram_edges(bins, cfg.threshold)[bins // 2 + 1 :]
        self._hist_edges = torch.tensor(side, dtype=torch.float32, device=device)

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
        return self._counters.device

    def _move(self, device: torch.device) -> None:
        """Move the flat tensors to `device` and point the probes at the moved ones (nothing when there)."""
        if self._counters.device == device:
            return
        self._counters = self._counters.to(device)
        self._hists = self._hists.to(device)
        self._hist_edges = self._hist_edges.to(device)
        self._bind()

    def _bind(self) -> None:
        """Give every probe its views into the flat tensors: per site of it, its layer's slices."""
        views: dict[tuple[int, str], tuple[Tensor, Tensor, Tensor]] = {}
        for site in self.sites:
            fire, abs_sum, tokens = self._stacked(site)
            for layer, p in enumerate(self._probes[site]):
                # tokens as a 1-element slice, not a 0-dim view: torch.compile (2.13) drops in-place adds into
                # 0-dim views of a graph input (tests/test_counter_buffer.py)
                views[(id(p), site)] = (tokens[layer : layer + 1], fire[layer], abs_sum[layer])
        hists = iter(self._hists.view(-1, 2 * (self.cfg.histogram_bins // 2) + 1))
        for p in self._all_probes():
            mine = [views[(id(p), site)] for site in p.sites]
            p.tokens, p.fire_count, p.abs_sum = ([v[i] for v in mine] for i in range(3))
            p.hist = [next(hists) for _ in p.sites]

    def to(self, device: torch.device | str) -> LivenessMonitor:
        """Move the counters (model.to() and accelerator.prepare already move them along with the model)."""
        self._move(torch.device(device))
        return self

    def reset(self) -> None:
        """Zero all counters (in place: a compiled model keeps its graph)."""
        self._counters.zero_()

    @contextlib.contextmanager
    def fresh_window(self) -> Iterator[LivenessMonitor]:
        """Count a separate window (e.g. a validation pass): saves the counters, zeroes them, yields, and puts
        the saved ones back, so the training window in progress is not disturbed."""
        saved = self._counters.clone()
        self.reset()
        try:
            yield self
        finally:
            self._counters.copy_(saved)

    def _units(self, site: str, layer: int) -> int:
        p = self._probes[site][layer]
        return p.units[p.sites.index(site)]

    def _stacked(self, site: str, flat: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(fire_count (L, U), abs_sum (L, U), tokens (L,)) of a site: views into `flat` (default: the
        counters), float64."""
        flat = self._counters if flat is None else flat
        at, layers, units = self._layout[site]
        n = layers * units
        return (
            flat[at : at + n].view(layers, units),
            flat[at + n + layers : at + 2 * n + layers].view(layers, units),
            flat[at + n : at + n + layers],
        )

    def state_dict(self) -> dict[str, Any]:
        """The counters as CPU tensors: {"version", "sites": {site: {"fire_count", "abs_sum", "tokens"}}}."""
        self._check_installed()
        sites = {}
        for site in self.sites:
            fire, abs_sum, tokens = (t.cpu() for t in self._stacked(site))
            sites[site] = {
                "fire_count": fire.to(torch.int64),
                "abs_sum": abs_sum.clone(),
                "tokens": tokens.to(torch.int64),
            }
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
            _, layers, units = self._layout[site]
            entry = sites[site]
            want = {"fire_count": (layers, units), "abs_sum": (layers, units), "tokens": (layers,)}
            for key, shape in want.items():
                t = entry.get(key)
                if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise CheckpointError(
                        f"liveness monitor state {site}.{key} has shape {got}, this model needs {shape}"
                    )
        for site in self.sites:
            for dst, key in zip(self._stacked(site), ("fire_count", "abs_sum", "tokens"), strict=True):
                dst.copy_(sites[site][key])  # checked above for every site: all or nothing is loaded

    # ------------------------------------------------------------------ outputs
    def histograms(self) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        """Histograms taken since the last call, {(site, layer): (counts int64 (bins,), edges (bins + 1,))},
        on the run's fixed `histogram_edges`; clears them."""
        taken = [p for p in self._all_probes() if p.hist_taken]
        if not taken:
            return {}
        edges = histogram_edges(self.cfg.histogram_bins, self.cfg.threshold)
        host = self._hists.cpu().numpy().copy()  # one copy for all layers
        self._hists.zero_()  # a probe not taken has added nothing since the last call
        rows = iter(host.reshape(-1, edges.size - 1))
        out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for p in self._all_probes():  # the order of `_bind`'s views
            for site in p.sites:
                row = next(rows)
                if p.hist_taken:
                    out[(site, p.layer)] = (row, edges.copy())
        for p in taken:
            p.hist_taken = False
        order = site_names()
        return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])))

    def _pruned_per_unit(self, pruned_masks: dict[int, Tensor] | None) -> list[Tensor]:
        """Per masked layer (in layer order), its pruned weights per MLP unit, float64 on the counters' device:
        what capacity needs besides the counts (the same on every process, so never reduced)."""
        masks = pruned_masks or {}
        if not masks or MLP_SITE not in self.sites:
            return []
        units = self._layout[MLP_SITE][2]
        # a stripping mask is laid out like the unit's first incoming weight (stripping.py)
        weight = self.arch.incoming_weights(self.arch.mlps(self.model)[0])[0]
        unit_rows = weight.unit_rows
        bad = {i: tuple(m.shape) for i, m in masks.items() if m.dim() != 2 or unit_rows(m).shape[0] != units}
        if bad:
            raise ValueError(
                f"pruned masks must be shaped like the MLP's incoming weight {tuple(weight.param.shape)} "
                f"({units} units); got {bad}"
            )
        device = self._device()
        return [unit_rows(masks[i]).sum(dim=1, dtype=torch.float64).to(device) for i in sorted(masks)]

    def _unpack(self, host: np.ndarray, masked: list[int]) -> tuple[LivenessCounts, np.ndarray]:
        """`LivenessCounts` from a flat host copy laid out as `_counters` followed by the pruned weights per
        unit of the `masked` layers; and what follows those (a snapshot's extra scalars)."""
        fire_count, abs_sums, tokens_of = {}, {}, {}
        for site, (at, layers, units) in self._layout.items():
            n = layers * units
            fire_count[site] = np.rint(host[at : at + n]).astype(np.int64).reshape(layers, units)
            tokens_of[site] = np.rint(host[at + n : at + n + layers]).astype(np.int64)
            abs_sums[site] = host[at + n + layers : at + 2 * n + layers].reshape(layers, units)
        counts = LivenessCounts(self.cfg, fire_count, abs_sums, tokens_of)
        at = self._counters.numel()
        if MLP_SITE in self.sites:
            units = self._layout[MLP_SITE][2]
            pruned = {i: np.rint(host[at + k * units : at + (k + 1) * units]) for k, i in enumerate(masked)}
            at += len(masked) * units
            dead = {i: np.flatnonzero(d) for i, _, d, _, _ in counts._layers(MLP_SITE)}
            counts.capacity = _capacity(self.model, dead, pruned)
        return counts, host[at:]

    def counts(
        self, reduce: Reduce | None = None, pruned_masks: dict[int, Tensor] | None = None
    ) -> LivenessCounts:
        """Sum the counters over processes (`reduce`: a sum over processes, e.g.
        `lambda t: accelerator.reduce(t, "sum")`; None for one process) and bring them to the host, now (a host
        sync; `snapshot` is the one without). The window goes on counting.

        Everything travels in one flat float64 tensor, reduced once and copied to the host once, whatever the
        model size: the counters (float64 on the device: every integer below 2**53 is exact, so the counts come
        back exact), and (not reduced: the same on every process) the pruned weights per MLP unit that capacity
        needs. Capacity needs site mlp_post and is None without it."""
        self._check_installed()
        tail = self._pruned_per_unit(pruned_masks)
        flat = self._counters.clone()
        if reduce is not None:
            flat = reduce(flat)
        host = torch.cat([flat, *tail]).cpu().numpy()
        return self._unpack(host, sorted(pruned_masks or {}) if tail else [])[0]

    def snapshot(
        self,
        sum_processes: bool = False,
        pruned_masks: dict[int, Tensor] | None = None,
        extra: Sequence[Tensor] = (),
    ) -> PendingCounts:
        """Close the window without a host sync: copy the counters and zero them on the device, start their sum
        over processes (`sum_processes`: an asynchronous all-reduce over the default process group, where there
        is one of more than one process; a collective then, so call it on every process), and start the copy
        to the host (pinned memory, not blocking, on a GPU). `PendingCounts.result()` reads them later, at a
        moment that syncs anyway. The next window starts counting at once.

        `extra`: device scalars (or small tensors) of the caller's, e.g. a window's loss sum, carried in the
        same flat tensor and copy, not reduced (give values that are the same on every process, or sum them
        yourself); read with `PendingCounts.extra`. `pruned_masks` as in `counts`."""
        self._check_installed()
        device = self._device()
        tail = self._pruned_per_unit(pruned_masks)
        tail += [t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in extra]
        flat = torch.cat([self._counters, *tail])
        self._counters.zero_()  # in place: the views (and a compiled graph) keep pointing at it
        work = None
        if sum_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # only the counters are summed; the tail is the same on every process
            work = dist.all_reduce(flat[: self._counters.numel()], async_op=True)
        masked = sorted(pruned_masks or {}) if MLP_SITE in self.sites else []
        return PendingCounts(self, flat, work, masked)

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
                    f"{self.arch.block_name(p.layer)}.{p.module} is no longer the module the liveness monitor "
                    "watches (was it replaced, e.g. by an activation swap, after the monitor was installed?); "
                    "close() the monitor and create a new one after changing the model"
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


class PendingCounts:
    """A window's counters on their way to the host (`LivenessMonitor.snapshot`). `result()` waits for them:
    the sum over processes and the copy run meanwhile, so call it where the host waits for the device anyway
    (the next log, a validation, an epoch end, a checkpoint); it syncs only what is not done by then."""

    def __init__(self, monitor: LivenessMonitor, flat: Tensor, work: Any, masked: list[int]) -> None:
        self._monitor = monitor
        self._flat = flat
        self._work = work
        self._masked = masked
        self._done: torch.cuda.Event | None = None
        self._counts: LivenessCounts | None = None
        self.extra = np.zeros(0)
        """The caller's extra values (`snapshot(extra=...)`), flattened, float64; filled by `result()`."""
        if flat.device.type == "cuda":
            if work is not None:
                work.wait()  # NCCL: the current stream waits for the sum; the host does not
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
            self._flat, self._work = host, None

    def result(self) -> LivenessCounts:
        """The window's counts (summed over processes when asked), waiting for them if need be; the same
        object on later calls."""
        if self._counts is None:
            if self._work is not None:
                self._work.wait()  # gloo on CPU: the sum ran on its own thread
            if self._done is not None:
                self._done.synchronize()
            host = self._flat.numpy() if self._flat.device.type == "cpu" else self._flat.cpu().numpy()
            self._counts, self.extra = self._monitor._unpack(host, self._masked)
            self._flat = self._work = self._done = None
        return self._counts
