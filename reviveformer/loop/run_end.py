"""The run's end: the final weights measured (again only when the last measurement is older than them),
`final/` written whole, status.json, the dead ratios after the session's last revival, and the `Summary`
(whose run files, the report page among them, are read and written by `Summary.add_run_files`)."""

from __future__ import annotations

from pathlib import Path

from reviveformer import checkpoint as ckpt
from reviveformer import metric_keys
from reviveformer.config import Config
from reviveformer.evaluation import Measurement
from reviveformer.liveness import LivenessReport
from reviveformer.loop.epoch_end import write_json
from reviveformer.loop.liveness_log import dead_ratios
from reviveformer.loop.position import Position
from reviveformer.loop.revival_pass import RevivalPass
from reviveformer.loop.run_control import RunControl
from reviveformer.loop.validator import Validator
from reviveformer.summary import Summary, write_final
from reviveformer.tracking import Tracking


class RunEnd:
    def __init__(
        self,
        cfg: Config,
        accelerator,
        measurement: Measurement,
        validator: Validator,
        tracking: Tracking,
        control: RunControl,
        revival: RevivalPass | None,
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.run_dir = Path(cfg.train.output_dir)
        self.is_main = accelerator.is_main_process
        self.measurement = measurement
        self.validator = validator
        self.tracking = tracking
        self.control = control
        self.revival = revival
        self.last_report: LivenessReport | None = None
        """The latest epoch or task end's liveness report (the summary's dead ratios)."""

    def finish(self, model, tokenizer, pos: Position, stopped_by: str | None) -> Summary:
        """Measure and write the final weights (`model`, prepared) and return the run's Summary."""
        acc = self.accelerator
        report = self.measure_final(pos.step)
        ckpt.check_finite_weights(model, "final/")
        acc.wait_for_everyone()
        if self.is_main:
            write_final(acc.unwrap_model(model), tokenizer, self.cfg, self.run_dir)
            self.control.status("stopped" if stopped_by else "finished", pos, stopped_by, final_step=pos.step)
        acc.wait_for_everyone()
        dead = dead_ratios(report, self.cfg.liveness.sites) if report is not None else {}
        after = {}
        if self.revival is not None and self.revival.revived:
            after = dead  # measured on the final weights, after this session's last revival
            self.tracking.log(
                {metric_keys.dead_ratio_after_key(k): v for k, v in after.items()}, step=pos.step
            )
        summary = Summary(
            run_dir=str(self.run_dir),
            steps=pos.step,
            epochs=pos.epoch,
            tokens=pos.tokens_seen,
            val_loss=self.validator.last.get(metric_keys.VAL_LOSS, float("nan")),
            val_ppl=self.validator.last.get(metric_keys.VAL_PPL, float("nan")),
            stopped_by=stopped_by,
            dead_ratio=dead,
            dead_ratio_after_revival=after,
        )
        if self.is_main:
            summary.add_run_files(self.cfg.revival.method, report=self.cfg.train.report)
        return summary

    def measure_final(self, step: int) -> LivenessReport | None:
        """The summary's numbers are those of the weights in final/: measured again (and logged, with
        liveness/final.json) when the last measurement is older than them (a run ended by train.max_steps or an
        alert, or a revival at the last step); else the last epoch end's. Returns the liveness report."""
        report = self.last_report
        revived_last = self.revival is not None and self.revival.last_step == step
        if not self.validator.is_current(step) or revived_last:
            val, fresh = self.measurement.measure()
            self.validator.record(val, step)
            report = fresh or report
            final = {**val, **(fresh.metrics() if fresh is not None else {})}
            self.tracking.log(final, step=step)
        self.validator.log_final(step)
        if report is not None and self.is_main:
            write_json(self.run_dir / "liveness" / "final.json", report.to_json())
        return report
