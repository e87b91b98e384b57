"""When and what to checkpoint: every `train.checkpoint_every` optimizer steps, after each epoch end, and
where a run leaves an epoch early; never twice for one position (a resumed run's first position is already
in the checkpoint it came from)."""

from __future__ import annotations

from pathlib import Path

from reviveformer import checkpoint as ckpt
from reviveformer.faults import fault_point
from reviveformer.loop.training_state import TrainingState


class Checkpointer:
    def __init__(
        self,
        accelerator,
        directory: Path,
        every: int,
        limit: int,
        model,
        state: TrainingState,
        saved_step: int | None = None,
        tokenizer=None,
    ) -> None:
        self.accelerator = accelerator
        self.directory = directory
        self.every = every
        self.limit = limit
        self.model = model
        self.state = state
        self.saved_step = -1 if saved_step is None else saved_step
        """The step of the position last saved (or resumed from: its checkpoint holds it already)."""
        self.tokenizer = tokenizer
        """The run's tokenizer, saved in every checkpoint (a resume encodes its data with it)."""

    def save(self, step: int) -> Path:
        ckpt.check_finite_weights(self.model, f"the checkpoint of step {step}")
        self.saved_step = step
        return ckpt.save_checkpoint(
            self.accelerator, self.directory, step, self.state.state_dict(), self.limit, self.tokenizer
        )

    def after_step(self, step: int) -> None:
        """The periodic save, when `step` is a multiple of `checkpoint_every`."""
        if self.every and step % self.every == 0:
            self.save(step)
            fault_point("after_periodic_checkpoint")

    def save_unless_saved(self, step: int) -> Path:
        """Keep the position of a run that leaves mid-epoch, unless a checkpoint already holds it; returns the
        checkpoint that holds it."""
        if self.saved_step != step:
            return self.save(step)
        return self.directory / ckpt.step_dir_name(step)

    def mark_saved(self, step: int) -> None:
        """The position of `step` is in a checkpoint already (the one a run resumed from)."""
        self.saved_step = step
