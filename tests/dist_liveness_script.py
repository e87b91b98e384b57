"""Launched by tests/test_liveness.py under `accelerate launch` (1 or 2 CPU processes).

Builds the seeded tiny model, counts liveness over a fixed set of padded token sequences split across the
processes (each sequence seen by exactly one process), reduces with `accelerator.reduce(t, "sum")` and, on the
main process, writes the report JSON to the path given on the command line.

    accelerate launch ... tests/dist_liveness_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import VOCAB, finish, tiny_model, watchdog
from transformers import GPT2LMHeadModel

from reviveformer.config import LivenessConfig
from reviveformer.liveness import LivenessMonitor

N_SEQ = 8  # divisible by 2: no process gets a padding duplicate
SEQ_LEN = 16
BATCH = 2
KILLED = {0: [3, 17, 200], 1: [5]}  # relu units made dead by a large negative bias


def build_model() -> GPT2LMHeadModel:
    model = tiny_model(bos_token_id=0, eos_token_id=0).eval()
    with torch.no_grad():
        for i, units in KILLED.items():
            model.transformer.h[i].mlp.c_fc.bias[units] = -100.0
    return model


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed token ids (N_SEQ, SEQ_LEN) and right-padding masks with lengths in [1, SEQ_LEN]."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (N_SEQ, SEQ_LEN), generator=g)
    lengths = torch.randint(1, SEQ_LEN + 1, (N_SEQ,), generator=g)
    mask = (torch.arange(SEQ_LEN)[None, :] < lengths[:, None]).long()
    return ids, mask


def main(out: str) -> None:
    watchdog()
    accelerator = Accelerator(cpu=True)
    model = build_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    model = accelerator.prepare(model)  # DDP with 2 processes: forwards run through it, as in the trainer
    ids, mask = data()
    mine = list(range(accelerator.process_index, N_SEQ, accelerator.num_processes))
    with torch.no_grad():
        for start in range(0, len(mine), BATCH):
            rows = mine[start : start + BATCH]
            monitor.set_attention_mask(mask[rows])
            model(input_ids=ids[rows], attention_mask=mask[rows])
    report = monitor.report(reduce=lambda t: accelerator.reduce(t, "sum"))
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"num_processes": accelerator.num_processes, "report": report.to_json()}, f)
    monitor.close()
    del model  # the DDP model goes before its process group (dist_common.finish)
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1])
