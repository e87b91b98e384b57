"""Launched by tests/test_tasks.py under `accelerate launch` with 2 CPU processes: each process makes the task
permutations on its own device; writes, from the main process, whether every process holds the same ones.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_tasks_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import finish, same_everywhere, watchdog

from reviveformer.config import TasksConfig
from reviveformer.tasks import TaskSequence


def main(out: str) -> None:
    watchdog()
    acc = Accelerator()
    # each process's global RNG elsewhere: the permutations must not read it
    torch.manual_seed(acc.process_index)
    tasks = TaskSequence(TasksConfig(kind="permuted_vocab", count=3, steps=10), 1000, [50], 5, acc.device)
    same = [same_everywhere(acc, tasks.permutation(k)) for k in range(3)]
    identity = torch.equal(tasks.permutation(0).cpu(), torch.arange(1000))
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump({"same_everywhere": same, "identity_at_0": identity}, f)
    finish(acc)


if __name__ == "__main__":
    main(sys.argv[1])
