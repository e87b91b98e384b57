"""In a process of its own (W&B's mode and settings are per process, and earlier tests in the suite settle them):
a Trainer run reporting to W&B offline with ReviveformerCallback. Every dict the Trainer's W&B run receives
(`wandb.sdk.wandb_run.Run.log`) and the Trainer's own log history are written to the JSON file given."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import wandb
from hf_common import tiny_gpt2, trainer

from reviveformer.integrations.transformers import ReviveformerCallback


def main() -> None:
    out = Path(sys.argv[1])
    received: list[dict] = []
    original = wandb.sdk.wandb_run.Run.log

    def log(self, data, *args, **kwargs):
        received.append({k: v for k, v in data.items() if isinstance(v, int | float)})
        return original(self, data, *args, **kwargs)

    wandb.sdk.wandb_run.Run.log = log
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer(Path(tmp), tiny_gpt2(), rows=16, batch=4, logging_steps=2, report_to=("wandb",))
        ReviveformerCallback().add_to(t)
        t.train()
        history = [h for h in t.state.log_history if "loss" in h]
    out.write_text(json.dumps({"received": received, "history": history}))


if __name__ == "__main__":
    main()
