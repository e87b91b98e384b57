"""The end of an epoch: a validation pass with a fresh liveness window, its metrics and alerts, the liveness
json and activation histograms of the epoch (`liveness/epoch_XXX.json`, `activations_epoch_XXX.json`), the
figures. It returns the report to revive from: the trainer moves the epoch counter, revives (`revival.every=
epoch`) and checkpoints around it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reviveformer import metric_keys
from reviveformer.evaluation import Measurement
from reviveformer.faults import fault_point
from reviveformer.liveness import LivenessMonitor, LivenessReport
from reviveformer.loop.liveness_log import LivenessLog
from reviveformer.loop.validator import Validator
from reviveformer.run_files import atomic_write, histograms_json
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")


def write_json(path: Path, data) -> None:
    """Write whole or not at all: a run killed mid-write leaves the previous file (or none)."""
    atomic_write(path, json.dumps(data))


class EpochEnd:
    def __init__(
        self,
        run_dir: Path,
        is_main: bool,
        monitor: LivenessMonitor | None,
        measurement: Measurement,
        validator: Validator,
        tracking: Tracking,
        liveness_log: LivenessLog,
        plots: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.plots = plots
        """Whether the epoch end draws its figures (`train.plots`)."""
        self.is_main = is_main
        self.monitor = monitor
        self.measurement = measurement
        self.validator = validator
        self.tracking = tracking
        self.liveness_log = liveness_log

    def run(self, epoch: int, step: int, epoch_seconds: float) -> tuple[LivenessReport | None, set[str]]:
        """The end of `epoch` (0-based) at optimizer step `step`; returns its liveness report (None without a
        monitor) and the alert actions it raised."""
        if self.monitor is not None:
            self.monitor.request_histogram()  # activation values of the first validation batch
        val, report = self.measurement.measure()
        fault_point("epoch_end_measure")
        hists = self.monitor.histograms() if self.monitor is not None else {}
        self.liveness_log.log_activation_histograms(hists, step)
        self.validator.record(val, step)
        self.tracking.log(
            {**val, metric_keys.EPOCH: epoch, metric_keys.TRAIN_EPOCH_SECONDS: epoch_seconds}, step=step
        )
        actions: set[str] = set()
        if report is not None:
            actions = self.liveness_log.log(report, step, when="epoch_end")
            if self.is_main:
                data = report.to_json()
                write_json(self.run_dir / "liveness" / f"epoch_{epoch:03d}.json", data)
                if hists:
                    path = self.run_dir / "liveness" / f"activations_epoch_{epoch:03d}.json"
                    write_json(path, histograms_json(hists))
                if self.plots:
                    self._plots(data, hists, step)
        return report, actions

    def draw(self, liveness: dict, step: int) -> None:
        """The figures of a measurement taken elsewhere (a task boundary's: epochs inside a task draw none)."""
        self._plots(liveness, {}, step)

    def _plots(self, liveness: dict, hists: dict, step: int) -> None:
        pdir = self.run_dir / "plots"
        from reviveformer import figures  # matplotlib: loaded by the first figure, not by the loop

        try:
            images = {
                metric_keys.plot_key("frequency_heatmap"): figures.plot_frequency_heatmap(
                    liveness, pdir / "frequency_heatmap.png"
                ),
                metric_keys.plot_key("dead_ratio_per_layer"): figures.plot_dead_ratio_per_layer(
                    liveness, pdir / "dead_ratio_per_layer.png"
                ),
                metric_keys.plot_key("dead_ratio_over_training"): figures.plot_dead_ratio_over_training(
                    self.run_dir / "metrics.jsonl", pdir / "dead_ratio_over_training.png"
                ),
            }
            if hists:
                images[metric_keys.plot_key("activation_histograms")] = figures.plot_activation_histograms(
                    hists, pdir / "activation_histograms.png"
                )
        except Exception as e:  # a figure must never stop training
            log.warning("plotting failed: %s: %s", type(e).__name__, e)
            return
        self.tracking.log_images(images, step=step)
