"""Launched by tests/test_revival_distributed.py under `accelerate launch` with 2 CPU processes.

Each process trains a tiny ReLU GPT-2 on its own batches (DDP), measures liveness, strips from the counts
reduced over both processes, and trains on. Writes, from the main process: whether the two replicas'
weights are identical afterwards, and whether the processes' local (unreduced) dead sets differed, which
is what would split the replicas if a decision were made from local counts.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_revival_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import batch, finish, flat_params, prepare_training, same_everywhere, tiny_model, watchdog

from reviveformer.config import LivenessConfig
from reviveformer.liveness import LivenessMonitor
from reviveformer.revival.stripping import SynapticStripping


def main(out: str) -> None:
    watchdog()
    acc = Accelerator()
    model = tiny_model()
    # rarely-firing units: how often they fire depends on each process's data
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.bias[:128] -= 0.35
    monitor = LivenessMonitor(model, LivenessConfig(dead_frequency=0.02))
    ddp, opt, gen = prepare_training(acc, model)

    def steps(n: int, reviver=None) -> None:
        for _ in range(n):
            ids = batch(gen)
            loss = ddp(input_ids=ids, labels=ids).loss
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            if reviver is not None:
                reviver.after_optimizer_step(model)

    steps(3)
    local = monitor.report()  # this process's counts only
    report = monitor.report(reduce=lambda t: acc.reduce(t, "sum"))
    reviver = SynapticStripping(fraction=0.3)
    metrics = reviver.revive(model, report, opt)
    steps(3, reviver)

    replicas_equal = same_everywhere(acc, flat_params(model))
    local_dead = torch.tensor([len(u) for u in local.dead_units("mlp_post").values()])
    local_dead_differ = not same_everywhere(acc, local_dead)
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(
                {
                    "replicas_equal": replicas_equal,
                    "local_dead_differ": local_dead_differ,
                    "stripped_now": metrics["revival/stripped_now"],
                },
                f,
            )
    ddp = opt = None  # the DDP model goes before its process group (the closure `steps` holds them too)
    finish(acc)


if __name__ == "__main__":
    main(sys.argv[1])
