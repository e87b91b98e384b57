"""Launched by tests/test_continual_methods.py under `accelerate launch` with 2 CPU processes.

Each process trains a tiny GELU GPT-2 on its own batches (DDP) with Continual Backprop attached (its hooks read
each process's own activations) and replacing units every step. Writes, from the main process: whether the two
replicas' weights, utilities and ages are identical afterwards, how many units were replaced, and whether the
processes' own activation sums of the first step differed (what would split the replicas if the utility were
taken from local activations).

    accelerate launch --multi_gpu --num_processes 2 tests/dist_cbp_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import batch, finish, flat_params, prepare_training, same_everywhere, tiny_model, watchdog

from reviveformer.revival import ContinualBackprop


def main(out: str) -> None:
    watchdog()
    acc = Accelerator()
    model = tiny_model(activation_function="gelu_new")
    ddp, opt, gen = prepare_training(acc, model)
    reviver = ContinualBackprop(replacement_rate=0.05, decay_rate=0.9, maturity_threshold=2, seed=0)
    reviver.attach(model, opt)
    local_sums = None
    for _ in range(8):
        ids = batch(gen)
        acc.backward(ddp(input_ids=ids, labels=ids).loss)
        reviver.before_optimizer_step(model)
        opt.step()
        opt.zero_grad()
        if local_sums is None:  # before the reviver sums them over the processes
            local_sums = reviver._sums.clone()
        reviver.after_optimizer_step(model)
    utility = torch.cat([reviver.utility[i] for i in sorted(reviver.utility)])
    ages = torch.cat([reviver.ages[i] for i in sorted(reviver.ages)])
    result = {
        "replicas_equal": same_everywhere(acc, flat_params(model)),
        "utility_equal": same_everywhere(acc, utility),
        "ages_equal": same_everywhere(acc, ages),
        "local_sums_differ": not same_everywhere(acc, local_sums),
        "replaced_total": reviver.replaced_total,
    }
    reviver.close()
    del ddp
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)
    finish(acc)


if __name__ == "__main__":
    main(sys.argv[1])
