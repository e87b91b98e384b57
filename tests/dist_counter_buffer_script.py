"""Launched by tests/test_counter_buffer.py under `accelerate launch` (1 or 2 CPU processes).

The sequences of tests/dist_liveness_script.py, split across the processes, counted in two windows: the first
closed by `LivenessMonitor.snapshot(sum_processes=True)` (an asynchronous all-reduce) and read only after the
second window's forwards; the second read by the blocking `counts` with accelerate's reduce. The main process
writes both windows' counts and the snapshot's extra values to the JSON path given on the command line.

    accelerate launch ... tests/dist_counter_buffer_script.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from dist_common import finish, watchdog
from dist_liveness_script import N_SEQ, build_model, data

from reviveformer.config import LivenessConfig
from reviveformer.liveness import LivenessCounts, LivenessMonitor

BATCH = 2


def plain(counts: LivenessCounts) -> dict:
    return {
        site: {"fire_count": counts.fire_count[site].tolist(), "tokens": counts.tokens[site].tolist()}
        for site in counts.fire_count
    }


def main(out: str) -> None:
    watchdog()
    accelerator = Accelerator(cpu=True)
    model = build_model()
    monitor = LivenessMonitor(model, LivenessConfig())
    model = accelerator.prepare(model)
    ids, mask = data()
    mine = list(range(accelerator.process_index, N_SEQ, accelerator.num_processes))
    windows = [mine[: len(mine) // 2], mine[len(mine) // 2 :]]  # sequences 0-3, 4-7 with one process
    pending = None
    with torch.no_grad():
        for w, rows_of_window in enumerate(windows):
            for start in range(0, len(rows_of_window), BATCH):
                rows = rows_of_window[start : start + BATCH]
                monitor.set_attention_mask(mask[rows])
                model(input_ids=ids[rows], attention_mask=mask[rows])
            if w == 0:
                # extra: the same on every process, carried along and not summed
                pending = monitor.snapshot(sum_processes=True, extra=(torch.tensor([2.5, 7.0]),))
    second = monitor.counts(reduce=lambda t: accelerator.reduce(t, "sum"))
    first = pending.result()
    if accelerator.is_main_process:
        with open(out, "w") as f:
            findings = {"first": plain(first), "second": plain(second), "extra": pending.extra.tolist()}
            json.dump({"num_processes": accelerator.num_processes, **findings}, f)
    monitor.close()
    del model  # the DDP model goes before its process group (dist_common.finish)
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1])
