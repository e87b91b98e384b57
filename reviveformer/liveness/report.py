"""The liveness numbers built from process-summed counts: `LivenessCounts` (the counters on the host and the
per-log metrics), `layer_liveness` and `LivenessReport` (the per-unit lists of liveness.json)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reviveformer import metric_keys
from reviveformer.architectures import MLP_SITE
from reviveformer.liveness.options import LivenessConfig

log = logging.getLogger(__name__)


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
