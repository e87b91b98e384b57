"""A sequence of tasks trained one after another in one run (continual training; `tasks` in the config).

`permuted_vocab` is the language-model version of Permuted MNIST (Farias & Jozefiak, ICLR 2025, "Self-Normalized
Resets", their permuted-Shakespeare benchmark): task k trains on the same corpus with every token id sent
through a fixed bijection perm_k of the vocabulary, on training and validation data alike; task 0 is the
identity. perm_k depends only on `tasks.seed` and k (a CPU `torch.Generator`), so every arm, process and resume
at one seed sees exactly the same tasks. The bijection is applied per batch on the device (a gather of input
ids and of labels).

`corpora`: task 0 trains on the data section's source, task k on `tasks.corpora[k - 1]`, each with its own
training and validation splits (prepared up front by the builder, one tokenizer for all); the trainer switches
loaders at each boundary.

The loop asks `due` after each step; the boundary itself (measure, log, revive, switch, checkpoint) is the
trainer's (docs/design.md, "Training loop")."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math

import torch

from reviveformer.config import TasksConfig
from reviveformer.errors import UserError
from reviveformer.loop.position import Position

IGNORE = -100  # a label the loss skips: it stays as it is


def permutation_seed(seed: int, task: int) -> int:
    """A generator seed from (tasks.seed, k) alone: hashed, so that nearby seeds and tasks share no stream."""
    digest = hashlib.sha256(f"reviveformer-task:{seed}:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def task_permutation(seed: int, task: int, vocab_size: int) -> torch.Tensor:
    """perm_k: token id i of task `task` becomes perm_k[i]. Task 0 is the identity."""
    if task == 0:
        return torch.arange(vocab_size)
    return torch.randperm(vocab_size, generator=torch.Generator().manual_seed(permutation_seed(seed, task)))


def permute_batch(batch: dict, perm: torch.Tensor) -> dict:
    """The batch with its input ids and labels sent through `perm` (labels of -100 kept)."""
    out = dict(batch)
    out["input_ids"] = perm[batch["input_ids"]]
    if "labels" in batch:
        labels = batch["labels"]
        out["labels"] = torch.where(labels == IGNORE, labels, perm[labels.clamp(min=0)])
    return out


class TaskSequence:
    """The tasks of a run: their lengths in optimizer steps, and the data transform of each."""

    def __init__(
        self, tc: TasksConfig, vocab_size: int, steps_per_epoch: list[int], log_every: int, device
    ) -> None:
        """`steps_per_epoch`: of each task's training data (one entry: the same data for all)."""
        self.kind = tc.kind
        self.count = tc.count
        self.seed = tc.seed
        self.vocab_size = vocab_size
        self.device = device
        per_epoch = steps_per_epoch if len(steps_per_epoch) == tc.count else steps_per_epoch[:1] * tc.count
        self.steps = [tc.steps if tc.steps is not None else tc.epochs * n for n in per_epoch]
        """Optimizer steps of each task."""
        for k, (steps, n) in enumerate(zip(self.steps, per_epoch, strict=True)):
            if steps % log_every:
                raise UserError(
                    f"tasks.epochs={tc.epochs} makes task {k} {steps} optimizer steps long ({n} per epoch), not a "
                    f"multiple of train.log_every={log_every}: the end-of-task training loss is the mean of the "
                    "task's last log window; give tasks.steps, or a train.log_every that divides it"
                )
        self._ends = list(itertools.accumulate(self.steps))  # linear: set-up stays fast at any tasks.count
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def total_steps(self) -> int:
        return self._ends[-1]

    def end_step(self, task: int) -> int:
        """The optimizer step at which `task` (0-based) ends."""
        return self._ends[task]

    def schedule_point(self, step: int) -> tuple[int, int]:
        """(steps into its task, the task's length) of the optimizer step `step` (0-based): where a schedule
        restarted at each task stands."""
        task = min(bisect.bisect_right(self._ends, step), self.count - 1)  # read at every step: no scan
        return step - (self._ends[task] - self.steps[task]), self.steps[task]

    def due(self, pos: Position) -> bool:
        """Whether the current task's boundary is due: its steps are done and its end has not run."""
        return pos.task < self.count and pos.step >= self.end_step(pos.task)

    def current(self, pos: Position) -> int:
        """The task whose data the model trains and is measured on (the last one once every task has ended)."""
        return min(pos.task, self.count - 1)

    def permutation(self, task: int) -> torch.Tensor:
        """perm_k on the device, made once per task."""
        if task not in self._perms:
            self._perms = {task: task_permutation(self.seed, task, self.vocab_size).to(self.device)}
        return self._perms[task]

    def batch(self, batch: dict, task: int) -> dict:
        """`batch` as task `task` sees it."""
        if task == 0 or self.kind != "permuted_vocab":  # task 0 is a plain run's data exactly
            return batch
        return permute_batch(batch, self.permutation(task))


class TaskBatches:
    """A (validation) loader whose batches are those of the current task: one of `loaders` per task, or one for
    all (permuted through the task's bijection)."""

    def __init__(self, loaders: list, tasks: TaskSequence, pos: Position) -> None:
        self.loaders = loaders
        self.tasks = tasks
        self.pos = pos
        """The run's position (restored in place at a resume): its task picks the data."""

    @property
    def loader(self):
        """The current task's loader, its batches as they are stored."""
        return self.loaders[min(self.tasks.current(self.pos), len(self.loaders) - 1)]

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        task = self.tasks.current(self.pos)
        for batch in self.loader:
            yield self.tasks.batch(batch, task)


def steps_per_epoch(batches_per_epoch: int, grad_accum: int) -> int:
    return math.ceil(batches_per_epoch / grad_accum)
