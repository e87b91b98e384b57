"""What every tests/dist_*_script.py does around its work under `accelerate launch` (CPU, gloo).

- `watchdog()`, first: a process still running after `HANG_AFTER_S` prints every thread's stack and exits, so a
  hang fails its test with the place it hung instead of waiting for the launcher's timeout.
- `finish(acc)`, last, after the script has dropped its own references to prepared (DDP) models: waits for
  every process, frees what the accelerator still holds (`trainer.release`: a DDP model alive at process-group
  teardown made 2-process CPU runs hang at exit now and then), and ends the process group.
- `tiny_model()`, `prepare_training(acc, model)` and `batch(gen)`: the one tiny model the scripts train, its
  optimizer and the per-process data; `flat_params(model)` and `same_everywhere(acc, t)` for comparing the
  processes."""

from __future__ import annotations

import faulthandler

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from reviveformer.builder import release_accelerator

HANG_AFTER_S = 120
VOCAB = 97
TINY = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 2,
    "n_positions": 32,
    "vocab_size": VOCAB,
    "activation_function": "relu",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


def watchdog() -> None:
    faulthandler.dump_traceback_later(HANG_AFTER_S, exit=True)


def finish(acc) -> None:
    acc.wait_for_everyone()
    release_accelerator(acc)
    acc.end_training()


def tiny_model(**config) -> GPT2LMHeadModel:
    """The seeded 2-layer, 64-wide GPT-2 every script builds: ReLU (a dead unit is exactly silent) and no dropout
    (a process's forward pass depends on its data alone). `config` adds or replaces GPT2Config keys."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**{**TINY, **config}))


def prepare_training(acc, model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    """AdamW over `model`, both prepared (DDP across the processes), and a batch generator seeded per process, so
    that each process trains on data of its own."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ddp, opt = acc.prepare(model, opt)
    return ddp, opt, torch.Generator().manual_seed(100 + acc.process_index)


def batch(gen: torch.Generator) -> torch.Tensor:
    """4 sequences of 32 random token ids (the scripts train on their own ids as labels)."""
    return torch.randint(0, VOCAB, (4, 32), generator=gen)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def same_everywhere(acc, t: torch.Tensor) -> bool:
    """Whether `t` is equal on every process (gathered to each)."""
    every = acc.gather(t[None])
    return all(torch.equal(every[0], other) for other in every[1:])
