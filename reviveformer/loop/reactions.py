"""What the Trainer does with the parts' decisions: a revival pass when its timing or an alert asks for one, an
alert's stop, and, after an epoch or task end's measurement, its report kept for the summary. The parts decide;
`Reactions` acts, so that no part calls another (or the Trainer) back."""

from __future__ import annotations

import logging

from reviveformer.faults import fault_point
from reviveformer.liveness import LivenessReport
from reviveformer.loop.position import Position
from reviveformer.loop.revival_pass import RevivalPass
from reviveformer.loop.run_end import RunEnd
from reviveformer.loop.step_guard import StepGuard
from reviveformer.loop.training_state import TrainingState

log = logging.getLogger("reviveformer")


class Reactions:
    def __init__(
        self,
        revival: RevivalPass | None,
        guard: StepGuard,
        run_end: RunEnd,
        state: TrainingState,
        pos: Position,
    ) -> None:
        self.revival = revival
        self.guard = guard
        self.run_end = run_end
        self.state = state
        self.pos = pos

    def revive(self, report: LivenessReport | None = None, when: str | None = None) -> dict[str, float]:
        """One revival pass (measured on the validation split unless a fresh report is given); `when` words
        the moment for the console line (by default the epoch's)."""
        if self.revival is None:
            return {}
        self.guard.read()  # a reviver that counts steps (GraMa) has its skipped steps taken out before it decides
        pos = self.pos  # batches_in_epoch is reset when an epoch ends, before its epoch-end work
        if when is None:
            when = (
                f"end of epoch {pos.epoch}" if pos.batches_in_epoch == 0 else f"during epoch {pos.epoch + 1}"
            )
        return self.revival(pos.step, when, report)

    def act_on_alerts(self, actions: set[str]) -> str | None:
        """Act on the alert actions a part returned; returns the stop reason, if any."""
        if "revive" in actions and self.revival is not None:
            log.warning("alert action: reviving now (step %d)", self.pos.step)
            self.revive()
        return "alert action stop" if "stop" in actions else None

    def after_end(
        self,
        report: LivenessReport | None,
        actions: set[str],
        revive: bool,
        fault: str,
        when: str | None = None,
    ) -> str | None:
        """After an epoch or task end's measurement: its report kept for the summary, the end's own revival,
        then the alerts' actions (their `revive` would only repeat that one). Returns a stop reason, if any."""
        if report is not None:
            self.run_end.last_report = report  # the summary's dead ratios: the latest measurement's
        if revive:
            self.revive(report, when)
        fault_point(fault)
        self.state.stopped_by = self.act_on_alerts(actions - ({"revive"} if revive else set()))
        return self.state.stopped_by
