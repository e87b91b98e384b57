"""A tiny `transformers.Trainer` run shared by tests/test_integration_transformers.py and
tests/dist_hf_callback_script.py: the 2-layer, 64-wide ReLU GPT-2 (with units killed by a large negative bias, so
that some are dead), a dataset of random token ids built here, and the Trainer's arguments."""

from __future__ import annotations

from pathlib import Path

import torch
from dist_common import VOCAB, tiny_model
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

SEQ, N_LAYER = 16, 2
KILLED = {0: [3, 17, 200], 1: [5]}


def tiny_gpt2() -> GPT2LMHeadModel:
    model = tiny_model(bos_token_id=0, eos_token_id=0)  # dist_common's seeded ReLU GPT-2, no dropout
    with torch.no_grad():
        for i, units in KILLED.items():
            model.transformer.h[i].mlp.c_fc.bias[units] = -100.0
    return model


class TokenDataset(torch.utils.data.Dataset):
    """`n` rows of random token ids, their own labels."""

    def __init__(self, n: int) -> None:
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(
    out: Path,
    model,
    rows: int,
    batch: int,
    *,
    lr: float = 1e-3,
    logging_steps: int = 2,
    evaluate: bool = False,
    report_to: tuple[str, ...] = (),
    save_strategy: str = "no",
    **args,
) -> Trainer:
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=lr,
        logging_steps=logging_steps,
        report_to=list(report_to),
        use_cpu=True,
        save_strategy=save_strategy,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **args,
    )
    data = TokenDataset(rows)
    return Trainer(model=model, args=targs, train_dataset=data, eval_dataset=data if evaluate else None)
