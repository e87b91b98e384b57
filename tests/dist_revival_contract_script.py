"""Launched by tests/test_revival_contract.py under `accelerate launch` with 2 CPU processes.

For every registered revival method and the tests' own plug-in (tests/custom_reviver.py): each process trains
a tiny ReLU GPT-2 on its own batches (DDP), with the reviver's per-step hooks, measures liveness, revives from
the counts reduced over both processes, and trains on. Writes, from the main process, per method: whether the
two replicas' weights are identical afterwards, whether the revival edited the model, and whether the
processes' own (unreduced) dead sets differed, which is what would split the replicas if a method decided
from local numbers.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_revival_contract_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from custom_reviver import BiasKick
from dist_common import batch, finish, flat_params, prepare_training, same_everywhere, tiny_model, watchdog

from reviveformer.config import LivenessConfig
from reviveformer.liveness import LivenessMonitor
from reviveformer.revival import REVIVERS, Reviver


def run_method(acc: Accelerator, cls: type[Reviver]) -> dict[str, bool]:
    model = tiny_model()
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.bias[:4] = -100.0  # silent everywhere: every method has something to revive
            block.mlp.c_fc.bias[4:128] -= 0.35  # rarely firing: how often depends on each process's data
    monitor = LivenessMonitor(model, LivenessConfig(dead_frequency=0.02))
    ddp, opt, gen = prepare_training(acc, model)
    reviver = cls.from_config(cls.Options() if cls.Options is not None else None, seed=0)

    def steps(n: int) -> None:
        for _ in range(n):
            ids = batch(gen)
            acc.backward(ddp(input_ids=ids, labels=ids).loss)
            reviver.before_optimizer_step(model)
            opt.step()
            opt.zero_grad()
            reviver.after_optimizer_step(model)

    steps(3)
    local = monitor.report()  # this process's counts only
    report = monitor.report(reduce=lambda t: acc.reduce(t, "sum"))
    before = flat_params(model).clone()
    reviver.revive(model, report, opt)
    edited = not torch.equal(before, flat_params(model))
    steps(2)
    monitor.close()

    local_dead = torch.tensor([len(u) for u in local.dead_units("mlp_post").values()])
    return {
        "replicas_equal": same_everywhere(acc, flat_params(model)),
        "local_dead_differ": not same_everywhere(acc, local_dead),
        "edited": edited,
    }


def main(out: str) -> None:
    watchdog()
    acc = Accelerator()
    result = {cls.name: run_method(acc, cls) for cls in [*REVIVERS.values(), BiasKick]}
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)
    finish(acc)  # run_method's DDP models are out of scope; finish frees the accelerator's references


if __name__ == "__main__":
    main(sys.argv[1])
