"""Logging a liveness window (the train log's counts or an epoch end's report): its metrics through the alert
rules to tracking, the per-unit firing-frequency histograms to W&B, and the activation histograms.

A train log's window is read one step of the host later than it closes: `defer` takes it on its way to the
host (`LivenessMonitor.snapshot`, no host sync), and `settle` logs it under the step that closed it at the next
moment the host waits for the device anyway: the next train log, a validation, a revival's measurement, an
activation histogram, an epoch end, a checkpoint. Each of those settles before logging anything of its own, so
the rows of a run stay in step order (W&B drops a step lower than its last). The alerts of a window act when it
is settled, through the actions the next train log or epoch end returns: one window late."""

from __future__ import annotations

from reviveformer import metric_keys
from reviveformer.alerts import AlertManager
from reviveformer.liveness import LivenessCounts, LivenessReport, PendingCounts
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
        self._pending: tuple[PendingCounts, int, bool] | None = None
        """A train log's window not read yet: (its counts on the way, its step, frequency histograms due)."""
        self._actions: set[str] = set()
        """Actions of settled windows' alerts, until a train log or an epoch end returns them."""

    def defer(self, pending: PendingCounts, step: int, histograms: bool) -> None:
        """Log the train window closed at `step` when it is read (`settle`), not now."""
        self.settle()
        self._pending = (pending, step, histograms)

    def settle(self) -> None:
        """Read the deferred window (waiting for the device if it has not finished) and log it under its own
        step; its alerts' actions wait for `take_actions`. Nothing when none is deferred."""
        if self._pending is None:
            return
        pending, step, histograms = self._pending
        self._pending = None
        counts = pending.result()
        if counts.max_tokens == 0:  # a window with no counted tokens (liveness.sample_every) says nothing
            return
        self._actions |= self._log(counts, step, when="train", histograms=histograms)

    def take_actions(self) -> set[str]:
        """The actions of the windows settled since the last call."""
        actions, self._actions = self._actions, set()
        return actions

    def log(
        self,
        window: LivenessReport | LivenessCounts,
        step: int,
        when: str,
        histograms: bool = True,
        extra: dict[str, float] | None = None,
    ) -> set[str]:
        """Log the window's metrics with the alerts they trip, and `extra` in the same row (a task boundary's
        numbers), after the deferred window; returns the alerts' actions (revive, stop), the deferred windows'
        included."""
        self.settle()
        return self._log(window, step, when, histograms, extra) | self.take_actions()

    def _log(
        self,
        window: LivenessReport | LivenessCounts,
        step: int,
        when: str,
        histograms: bool,
        extra: dict[str, float] | None = None,
    ) -> set[str]:
        metrics = window.metrics()
        outcome = self.alerts.check(metrics, step=step, when=when)
        metrics.update(outcome.metrics)
        metrics.update(extra or {})
        self.tracking.log(metrics, step=step)
        if histograms and self.is_main and self.tracking.wandb_run is not None:
            freqs = {
                metric_keys.layer_key(site, i, metric_keys.FREQUENCY): f
                for site, layers in window.frequencies().items()
                for i, f in enumerate(layers)
            }
            self.tracking.log_histograms(freqs, step)
        return set(outcome.actions)

    def log_activation_histograms(self, hists: dict, step: int) -> None:
        self.settle()  # reading the histograms synced: the deferred window's row goes first
        if hists:
            self.tracking.log_histograms(
                {
                    metric_keys.layer_key(site, layer, metric_keys.ACTIVATIONS): v
                    for (site, layer), v in hists.items()
                },
                step,
            )
