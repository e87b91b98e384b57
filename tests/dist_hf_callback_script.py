"""Under `accelerate launch` (1 or 2 processes): a Trainer run with ReviveformerCallback at learning rate 0 (the
weights stay as built, so the counts depend only on which rows were seen, not on the process count); the main
process writes the summed counts of the one log window (all 16 rows) to the JSON file given."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from dist_common import watchdog
from hf_common import tiny_gpt2, trainer

from reviveformer.integrations.transformers import ReviveformerCallback


def main() -> None:
    watchdog()
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer(Path(tmp), tiny_gpt2(), rows=16, batch=8, lr=0.0, logging_steps=1000)
        n = t.args.world_size
        t.args.per_device_train_batch_size = 8 // n  # the same 8 rows per step on 1 or 2 processes
        cb = ReviveformerCallback().add_to(t)
        t.train()
        c = cb.last_counts
        if t.is_world_process_zero():
            out.write_text(
                json.dumps(
                    {
                        "num_processes": n,
                        "tokens": c.tokens["mlp_post"].tolist(),
                        "fire_count": c.fire_count["mlp_post"].tolist(),
                        "dead_ratio": c.metrics()["liveness/mlp_post/dead_ratio"],
                    }
                )
            )
        t.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
