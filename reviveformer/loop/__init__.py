"""The parts of the training loop that own their timing and state; `Trainer` calls them once per step and at
each epoch end, and each decides whether its moment has come and returns what it decided (alert actions, the
report to revive from) for the Trainer to act on; none calls the Trainer back (as torchtitan's `train()` asks
`checkpointer.save(step)` and `validator.should_validate(step)`).

- `Position`: where training is (step, epoch, batches in the epoch), saved in every checkpoint;
- `TrainWindow`: the train log's window (loss, steps, tokens) and its cadence; `TrainLog`: what is logged
  when it closes (the training scalars, then the liveness window's metrics and alerts);
- `BadSteps`: non-finite steps skipped, counted, and the halt past `train.max_bad_steps`;
- `Validator`: validation at `train.eval_every` and the last one measured;
- `RevivalTiming`: when revival runs; `RevivalPass`: one revival with what it logs;
- `LivenessLog`: a liveness window's metrics, alerts and histograms to tracking;
- `StepGuard`: a non-finite step's update skipped on the device, and the one host read of what the steps
  left there;
- `EpochEnd`: the epoch end's measurement, liveness json and figures; `TaskEnd`: a task boundary's;
- `RunEnd`: the final measurement, `final/` and the run's `Summary`;
- `Reactions`: what is done with the parts' decisions (a revival, an alert's action, an end's report kept);
- `Checkpointer`: when to checkpoint; `TrainingState`: what a checkpoint holds, the one door that saves and
  restores every stateful part;
- `Preemption`: SIGTERM/SIGINT turned into a checkpoint at the next train log; `RunControl`: the run's
  hold on its folder (lock, status.json) and the stop signals agreed over processes.

The contract: docs/design.md, "Training loop".
"""

from reviveformer.loop.bad_steps import BadSteps
from reviveformer.loop.checkpointer import Checkpointer
from reviveformer.loop.epoch_end import EpochEnd
from reviveformer.loop.liveness_log import LivenessLog
from reviveformer.loop.position import Position
from reviveformer.loop.preemption import Preemption
from reviveformer.loop.reactions import Reactions
from reviveformer.loop.revival_pass import RevivalPass
from reviveformer.loop.revival_timing import RevivalTiming
from reviveformer.loop.run_control import RunControl
from reviveformer.loop.run_end import RunEnd
from reviveformer.loop.step_guard import StepGuard
from reviveformer.loop.task_end import TaskEnd
from reviveformer.loop.train_log import TrainLog
from reviveformer.loop.training_state import TrainingState
from reviveformer.loop.validator import Validator
from reviveformer.loop.window import TrainWindow

__all__ = [
    "BadSteps",
    "Checkpointer",
    "EpochEnd",
    "LivenessLog",
    "Position",
    "Preemption",
    "Reactions",
    "RevivalPass",
    "RevivalTiming",
    "RunControl",
    "RunEnd",
    "StepGuard",
    "TaskEnd",
    "TrainLog",
    "TrainingState",
    "TrainWindow",
    "Validator",
]
