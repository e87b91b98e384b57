"""Logging a liveness window (the train log's counts or an epoch end's report): its metrics through the alert
rules to tracking, the per-unit firing-frequency histograms to W&B, and the activation histograms."""

from __future__ import annotations

from reviveformer import metric_keys
from reviveformer.alerts import AlertManager
from reviveformer.liveness import LivenessCounts, LivenessReport
from reviveformer.tracking import Tracking


def dead_ratios(report: LivenessReport, sites: list[str]) -> dict[str, float]:
    """Per watched site, the dead ratio of the whole model in `report`."""
    m = report.metrics()
    return {
        site: m[metric_keys.dead_ratio_key(site)] for site in sites if metric_keys.dead_ratio_key(site) in m
    }


def site_dormant_ratios(report: LivenessReport) -> dict[str, float]:
    """`liveness/<site>/dormant_ratio` of every site in `report`: dormant units over all its layers' units."""
    out = {}
    for site, layers in report.sites.items():
        units = sum(e.units for e in layers)
        dormant = sum(e.dormant_ratio * e.units for e in layers)
        out[metric_keys.dormant_ratio_key(site)] = dormant / units if units else 0.0
    return out


class LivenessLog:
    def __init__(self, alerts: AlertManager, tracking: Tracking, is_main: bool) -> None:
        self.alerts = alerts
        self.tracking = tracking
        self.is_main = is_main

    def log(
        self,
        window: LivenessReport | LivenessCounts,
        step: int,
        when: str,
        histograms: bool = True,
        extra: dict[str, float] | None = None,
    ) -> set[str]:
        """Log the window's metrics with the alerts they trip, and `extra` in the same row (a task boundary's
        numbers); returns the alerts' actions (revive, stop)."""
        metrics = window.metrics()
        outcome = self.alerts.check(metrics, step=step, when=when)
        metrics.update(outcome.metrics)
        metrics.update(extra or {})
        self.tracking.log(metrics, step=step)
        if histograms and self.is_main and self.tracking.wandb_run is not None:
            freqs = {
                metric_keys.layer_key(site, i, "frequency"): f
                for site, layers in window.frequencies().items()
                for i, f in enumerate(layers)
            }
            self.tracking.log_histograms(freqs, step)
        return set(outcome.actions)

    def log_activation_histograms(self, hists: dict, step: int) -> None:
        if hists:
            self.tracking.log_histograms(
                {
                    metric_keys.layer_key(site, layer, metric_keys.ACTIVATIONS): v
                    for (site, layer), v in hists.items()
                },
                step,
            )
