"""Launched by tests/test_grama.py under `accelerate launch` with 2 CPU processes.

Each process trains a tiny ReLU GPT-2 on its own batches (DDP) with GraMa scoring every step, then revives.
Writes, from the main process: whether the processes' local gradients differed (before DDP averaged them),
whether both processes reset the same units, whether the replicas are identical afterwards, and whether the
scores equal ones computed here from the gathered per-process gradients, averaged by hand.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_grama_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import batch, finish, flat_params, prepare_training, same_everywhere, tiny_model, watchdog
from revival_reports import NO_REPORT

from reviveformer.revival.grama import GraMa, step_scores


def main(out: str) -> None:
    watchdog()
    acc = Accelerator()
    model = tiny_model()
    ddp, opt, gen = prepare_training(acc, model)
    grama = GraMa(tau=0.6, seed=0)
    expected = [torch.zeros(256, dtype=torch.float64) for _ in range(2)]
    local_differ = False

    for _ in range(3):
        ids = batch(gen)
        # this process's own gradient first (no DDP), to know what DDP averages
        with ddp.no_sync():
            ddp(input_ids=ids, labels=ids).loss.backward()
        local = torch.stack([b.mlp.c_fc.weight.grad.clone() for b in model.transformer.h])
        both = acc.gather(local[None])
        local_differ |= not torch.equal(both[0], both[1])
        opt.zero_grad()
        acc.backward(ddp(input_ids=ids, labels=ids).loss)
        for i in range(2):  # DDP's gradient is the mean of the processes' gradients
            expected[i] += step_scores(both[:, i].double().mean(0)).double()
        grama.before_optimizer_step(model)
        opt.step()
        opt.zero_grad()

    scores = grama.window_scores(model)
    match = all(torch.allclose(scores[i].double(), expected[i] / 3, rtol=1e-4, atol=1e-6) for i in range(2))
    metrics = grama.revive(model, NO_REPORT, opt)
    decided = torch.tensor(
        [len(grama.last_layer_details())]
        + [int(s <= grama.tau) for i in range(2) for s in grama.last_scores[i]]
    )
    decisions_equal = same_everywhere(acc, decided)
    replicas_equal = same_everywhere(acc, flat_params(model))
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump(
                {
                    "reset": metrics["revival/dormant_units"],
                    "local_grads_differ": local_differ,
                    "decisions_equal": decisions_equal,
                    "replicas_equal": replicas_equal,
                    "scores_match_averaged_gradient": match,
                },
                f,
            )
    ddp = opt = None  # the DDP model goes before its process group
    finish(acc)


if __name__ == "__main__":
    main(sys.argv[1])
