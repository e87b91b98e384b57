"""The parts of the training loop that own their timing and state; `Trainer` calls them once per step and at
each epoch end, and each decides whether its moment has come (as torchtitan's `train()` asks
`checkpointer.save(step)` and `validator.should_validate(step)`).

The contract: docs/design.md, "Training loop".
"""

from reviveformer.loop.checkpointer import Checkpointer
from reviveformer.loop.revival_timing import RevivalTiming
from reviveformer.loop.validator import Validator
from reviveformer.loop.window import TrainWindow

__all__ = ["Checkpointer", "RevivalTiming", "TrainWindow", "Validator"]
