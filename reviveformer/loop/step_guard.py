"""The guard around the optimizer step: a non-finite step's update made a no-op on the device
(`skip_update_if`), and the one host read of what the steps since the last read left there (`read`): their
non-finite verdicts (`BadSteps`), the stop vote agreed over processes (`RunControl`), and the train log's
values. The trainer reads at the train log, a checkpoint, a revival, an epoch or task end and the finish:
steps every process reaches together (docs/design.md, "Training loop")."""

from __future__ import annotations

import torch

from reviveformer.loop.bad_steps import BadSteps
from reviveformer.loop.position import Position
from reviveformer.loop.run_control import RunControl
from reviveformer.loop.window import TrainWindow
from reviveformer.revival import Reviver


class StepGuard:
    def __init__(
        self,
        bad_steps: BadSteps,
        control: RunControl,
        pos: Position,
        window: TrainWindow,
        reviver: Reviver | None,
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scaler,
        tokens_per_step: int,
    ) -> None:
        self.bad_steps = bad_steps
        self.control = control
        self.pos = pos
        self.window = window
        self.reviver = reviver
        self.params = params
        self.optimizer = optimizer
        """The torch optimizer inside Accelerate's wrapper (its `found_inf` and GradScaler state)."""
        self.scaler = scaler
        """Accelerate's GradScaler (fp16 on CUDA), else None."""
        self.tokens_per_step = tokens_per_step
        self.fused = bool(optimizer.defaults.get("fused"))
        # a reviver that reads gradients (GraMa) is shown zeros on a skipped step, not the NaN
        self.mask_grads = reviver is not None and (
            type(reviver).before_optimizer_step is not Reviver.before_optimizer_step
        )

    def check(self, step: int, mean_loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Optimizer step `step`'s non-finite verdict, a 0-dim bool device tensor, kept for the next read. A
        gradient scaler skips an inf-gradient step by itself; without one (fp16 on CPU, bf16, fp32) the gradient
        norm must be finite too."""
        return self.bad_steps.check(step, mean_loss, grad_norm, check_norm=self.scaler is None)

    def count(self, mean_loss: torch.Tensor, bad: torch.Tensor) -> None:
        """One optimizer step in the window and the tokens seen; a skipped one (`bad`, still on the device) adds
        a zero loss now, and its steps and tokens are taken out at the read."""
        self.window.add(mean_loss.masked_fill(bad, 0.0), self.tokens_per_step)
        self.pos.tokens_seen += self.tokens_per_step

    def skip_update_if(self, bad: torch.Tensor) -> bool:
        """Make this step's update a no-op on the device when `bad` (a 0-dim bool device tensor) holds; returns
        whether to call the optimizer step. The fused AdamW's `found_inf` (the flag a GradScaler hands it)
        skips inside the kernel: parameters, exp_avg, exp_avg_sq and the step count untouched, at no cost and
        with no copy (a snapshot restored with torch.where would cost a copy of weights and state per step;
        a zero gradient or zero lr still moves AdamW's weights through momentum and decay)."""
        if self.mask_grads:  # masked_fill_, not a multiply: NaN * 0 is NaN
            for p in self.params:
                if p.grad is not None:
                    p.grad.masked_fill_(bad, 0.0)
        if not self.fused:  # no fused kernel on this device: the host decides (one sync per step)
            return not bool(bad)
        found_inf = bad.float()  # the kernel skips when it is exactly 1.0
        if self.scaler is None:
            self.optimizer.found_inf = found_inf  # read by AdamW.step (torch.optim.adam, `found_inf`)
        else:
            # fp16 on CUDA: GradScaler sets the kernel's found_inf from its own per-device flags (filled by
            # unscale_ in clip_grad_norm_), overwriting ours: the loss's verdict joins those flags
            state = self.scaler._per_optimizer_states[id(self.optimizer)]
            for flag in state["found_inf_per_device"].values():
                torch.maximum(flag, found_inf.to(flag.device), out=flag)
        return True

    def read(self, *scalars: torch.Tensor) -> list[float]:
        """The one host read, in one copy: the kept steps' verdicts (warnings, the halt past
        train.max_bad_steps; skipped steps taken out of the window, the tokens seen and the reviver's count),
        the agreed stop vote (`RunControl.stop_now`), and `scalars`, returned as floats."""
        rows, votes = self.bad_steps.rows(), self.control.votes()
        parts = [t for t in (rows, votes) if t is not None]
        parts += [s.detach().float().reshape(1) for s in scalars]
        values = torch.cat(parts).tolist() if parts else []
        n_rows = 0 if rows is None else rows.numel()
        before = self.pos.bad_steps
        self.pos.bad_steps = self.bad_steps.settle(values[:n_rows], before, check_norm=self.scaler is None)
        if skipped := self.pos.bad_steps - before:
            self.pos.tokens_seen -= skipped * self.tokens_per_step
            self.window.drop_skipped(skipped, self.tokens_per_step)
            if self.reviver is not None:
                self.reviver.on_skipped_steps(skipped)
        self.control.read_votes(values[n_rows] if votes is not None else None)
        return values[len(values) - len(scalars) :]

    def settle(self) -> None:
        """Account for every step taken (a checkpoint holds the position with each skipped step counted)."""
        self.read()
