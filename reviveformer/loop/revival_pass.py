"""One revival pass: measure (unless given a fresh report), revive, and log what changed: the method's
metrics, the dead ratios it decided from, capacity after it, a console line, the per-layer table and figure."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from reviveformer import metric_keys
from reviveformer.architectures import MLP_SITE
from reviveformer.errors import UserError
from reviveformer.evaluation import Measurement
from reviveformer.liveness import LivenessReport, capacity
from reviveformer.loop.liveness_log import dead_ratios
from reviveformer.revival import REVIVERS, Reviver
from reviveformer.revival.events import revival_event
from reviveformer.tracking import Tracking

log = logging.getLogger("reviveformer")


class RevivalPass:
    def __init__(
        self,
        reviver: Reviver,
        method: str,
        sites: list[str],
        model,
        optimizer,
        measurement: Measurement | None,
        tracking: Tracking,
        run_dir: Path,
        is_main: bool,
        plots: bool = True,
    ) -> None:
        self.reviver = reviver
        self.method = method
        self.sites = sites
        self.model = model
        """The model unwrapped (what a reviver edits)."""
        self.optimizer = optimizer
        self.measurement = measurement
        self.tracking = tracking
        self.run_dir = run_dir
        self.is_main = is_main
        self.plots = plots
        """Draw the per-layer revival figure (train.plots); its table is logged all the same."""
        self.revived = False
        """Whether this session has revived (the summary then reports the dead ratios after it)."""
        self.last_step = -1
        """The step of this session's last revival (one at the run's last step changed the final weights after
        their measurement: the summary measures them again)."""

    def __call__(self, step: int, when: str, report: LivenessReport | None = None) -> dict[str, float]:
        """Revive at `step` (`when` words the moment for the console line) from `report`, or from a
        measurement on the validation split."""
        if report is None:
            _, report = self.measurement.measure()
        if report.tokens == 0:  # every unit would count as dead: nothing to decide from
            log.warning("revival skipped at step %d: the liveness measurement saw no tokens", step)
            return {}
        unwrapped = self.model
        t0 = time.perf_counter()
        try:
            metrics = self.reviver.revive(unwrapped, report, self.optimizer)
        except Exception as e:
            if type(self.reviver) in REVIVERS.values():
                raise  # a bug in a built-in method is ours: it shows its traceback
            # a user's plug-in failing is bad input: nothing is saved after it, so the checkpoints stand
            raise UserError(
                f"revival.method={self.method}: its revive() raised {type(e).__name__}: {e} (at step {step}, "
                f"{when}); training stopped, the checkpoints already written in {self.run_dir / 'checkpoints'} "
                "are intact (resume from one with train.resume=auto once the method is fixed)"
            ) from None
        metrics[metric_keys.revival_key("seconds")] = time.perf_counter() - t0
        metrics.update(
            {metric_keys.dead_ratio_before_key(k): v for k, v in dead_ratios(report, self.sites).items()}
        )
        # capacity after revival: newly pruned weights no longer count as effective
        cap = capacity(unwrapped, report.dead_units(MLP_SITE), self.reviver.pruned_masks())
        metrics.update({metric_keys.capacity_key(k): float(v) for k, v in cap.items()})
        self.tracking.log(metrics, step=step)
        self.revived, self.last_step = True, step
        log.info(
            "%s", self.reviver.describe(revival_event(metrics, step), self.reviver.title or self.method, when)
        )
        if self.is_main:
            self._log_per_layer(step)
        return metrics

    def _log_per_layer(self, step: int) -> None:
        details = self.reviver.last_layer_details()
        if not details:
            return
        cols = list(details[0].keys())
        self.tracking.log_table(
            metric_keys.revival_key("per_layer"), cols, [[d[c] for c in cols] for d in details], step
        )
        if not self.plots:
            return
        try:
            from reviveformer import figures  # matplotlib: loaded by the first figure, not by the loop

            fig = figures.plot_revived_per_layer(details, self.run_dir / "plots" / "revival_per_layer.png")
            self.tracking.log_images({metric_keys.plot_key("revival_per_layer"): fig}, step=step)
        except Exception as e:  # a figure must never stop training
            log.warning("plotting failed: %s: %s", type(e).__name__, e)
