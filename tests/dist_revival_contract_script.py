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
from dist_common import finish, watchdog
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer.config import LivenessConfig
from reviveformer.liveness import LivenessMonitor
from reviveformer.revival import REVIVERS, Reviver


def run_method(acc: Accelerator, cls: type[Reviver]) -> dict[str, bool]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=2,
            n_positions=32,
            vocab_size=97,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.bias[:4] = -100.0  # silent everywhere: every method has something to revive
            block.mlp.c_fc.bias[4:128] -= 0.35  # rarely firing: how often depends on each process's data
    monitor = LivenessMonitor(model, LivenessConfig(dead_frequency=0.02))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ddp, opt = acc.prepare(model, opt)
    gen = torch.Generator().manual_seed(100 + acc.process_index)  # different data on each process
    reviver = cls.from_config(cls.Options() if cls.Options is not None else None, seed=0)

    def steps(n: int) -> None:
        for _ in range(n):
            ids = torch.randint(0, 97, (4, 32), generator=gen)
            acc.backward(ddp(input_ids=ids, labels=ids).loss)
            reviver.before_optimizer_step(model)
            opt.step()
            opt.zero_grad()
            reviver.after_optimizer_step(model)

    steps(3)
    local = monitor.report()  # this process's counts only
    report = monitor.report(reduce=lambda t: acc.reduce(t, "sum"))
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    reviver.revive(model, report, opt)
    edited = not torch.equal(before, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    steps(2)
    monitor.close()

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    replicas = acc.gather(flat[None])
    local_dead = torch.tensor([len(u) for u in local.dead_units("mlp_post").values()])
    all_local_dead = acc.gather(local_dead[None])
    return {
        "replicas_equal": bool(torch.equal(replicas[0], replicas[1])),
        "local_dead_differ": not torch.equal(all_local_dead[0], all_local_dead[1]),
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
