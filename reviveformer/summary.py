"""What a finished run reports: the `Summary` that `train` returns and the console prints, and the final model
folder it points to."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reviveformer import metric_keys
from reviveformer.faults import fault_point
from reviveformer.model import save_final

log = logging.getLogger("reviveformer")


@dataclass
class Summary:
    """What a finished run reports (also the return value of `train`)."""

    run_dir: str
    steps: int = 0
    epochs: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    val_loss: float = float("nan")
    val_ppl: float = float("nan")
    stopped_by: str | None = None
    dead_ratio: dict[str, float] = field(default_factory=dict)
    revival: str | None = None
    """The revival totals line (report.revival_totals_line), None when nothing was revived."""
    revival_step: int = 0
    dead_ratio_before_revival: dict[str, float] = field(default_factory=dict)
    """Per site, the dead ratio the last revival decided from."""
    dead_ratio_after_revival: dict[str, float] = field(default_factory=dict)
    """Per site, measured at the end of the run, after the last revival."""
    report: str | None = None

    def lines(self) -> list[str]:
        out = [
            f"run directory: {self.run_dir}",
            f"steps: {self.steps}  epochs: {self.epochs}  tokens: {self.tokens:,}  wall: {self.wall_s:.1f}s  "
            f"tokens/s: {self.tokens_per_s:,.0f}",
            f"validation loss: {self.val_loss:.4f}  perplexity: {self.val_ppl:.2f}",
        ]

        def ratios(d: dict[str, float]) -> str:
            return "  ".join(f"{k} {v:.3f}" for k, v in d.items())

        if self.revival:
            out.append(self.revival)
            out.append(
                f"dead ratio before the last revival (step {self.revival_step}): "
                f"{ratios(self.dead_ratio_before_revival)}"
            )
            if self.dead_ratio_after_revival:
                after = ratios(self.dead_ratio_after_revival)
                out.append(f"dead ratio after it (measured at the end): {after}")
        elif self.dead_ratio:
            out.append("dead ratio: " + ratios(self.dead_ratio))
        if self.stopped_by:
            out.append(f"stopped early: {self.stopped_by}")
        out.append(f"final model: {Path(self.run_dir) / 'final'}")
        if self.report:
            out.append(f"report: {self.report}")
        return out

    def add_run_files(self, method: str) -> None:
        """What only the run directory knows (main process): the median tokens/s of the logged windows, the
        totals of all of the run's revivals (a resumed run's included), and the report page, written now."""
        # the report page and its figures load here, at the run's end: the training loop imports none of them
        from reviveformer import plots
        from reviveformer import report as run_report

        run_dir = Path(self.run_dir)
        if not (run_dir / "metrics.jsonl").is_file():
            return
        rows = plots.read_metrics(run_dir / "metrics.jsonl")
        rates = [r[metric_keys.TRAIN_TOKENS_PER_S] for r in rows if metric_keys.TRAIN_TOKENS_PER_S in r]
        self.tokens_per_s = sorted(rates)[len(rates) // 2] if rates else 0.0
        events = run_report.revival_events(rows, method)
        if events:
            self.revival = run_report.revival_totals_line(events)
            self.revival_step = events[-1].step
            last = [r for r in rows if r.get("step") == events[-1].step and metric_keys.REVIVAL_COUNT in r][
                -1
            ]
            self.dead_ratio_before_revival = {
                site: v for k, v in last.items() if (site := metric_keys.parse_dead_ratio_before_key(k))
            }
        try:
            self.report = str(run_report.write_run_report(run_dir))
        except Exception as e:  # the report must never fail a finished run
            log.warning("report.html not written: %s: %s", type(e).__name__, e)


def write_final(model, tokenizer, cfg, run_dir: Path) -> None:
    """`final/`, whole or not at all: written beside it, then renamed over the old one (main process)."""
    tmp = run_dir / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_final(model, tokenizer, cfg, tmp)
    fault_point("final_write")
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
