"""A sweep: every cell of a grid, for every seed, then a comparison that groups the seeds of each cell
(`reviveformer sweep`, whose command-line side is `reviveformer/commands/sweep.py`).

One module per job, each importing only the ones above it:

- `grid`: `--grid`/`--activations`/`--seeds` parsed, every cell x seed planned as a `PlannedRun`, and each
  run's config loaded;
- `record`: sweep.json, what defines the sweep (checked on a re-run into its folder) and its summary;
- `runs`: the run folders: finished runs kept (if they are this sweep's), the others trained in order;
- `summary`: the runs' liveness, the per-layer charts, the comparison and the W&B summary run.

Callers import from `reviveformer.sweep`; the names below are its interface (the rest is each module's own).

The contract: docs/design.md, "Interfaces" (sweep folders).
"""

from __future__ import annotations

from reviveformer.sweep.grid import (
    PlannedRun,
    parse_grid,
    parse_seeds,
    plan_runs,
    run_configs,
)
from reviveformer.sweep.record import (
    SWEEP_FILE,
    check_definition,
    sweep_definition,
    write_definition,
)
from reviveformer.sweep.runs import (
    check_finished_run,
    finished_runs,
    train_runs,
)
from reviveformer.sweep.summary import final_liveness, summarise_sweep

__all__ = [
    "SWEEP_FILE",
    "PlannedRun",
    "check_definition",
    "check_finished_run",
    "final_liveness",
    "finished_runs",
    "parse_grid",
    "parse_seeds",
    "plan_runs",
    "run_configs",
    "summarise_sweep",
    "sweep_definition",
    "train_runs",
    "write_definition",
]
