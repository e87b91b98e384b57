"""A sweep: every cell of a grid, for every seed, then a comparison that groups the seeds of each cell
(`reviveformer sweep`, whose command-line side is `reviveformer/commands/sweep.py`).

One module per job, each importing only the ones above it:

- `grid`: `--grid`/`--activations`/`--seeds` parsed, every cell x seed planned as a `PlannedRun`, and each
  run's config loaded;
- `record`: sweep.json, what defines the sweep (checked on a re-run into its folder) and its summary;
- `runs`: the run folders: finished runs kept (if they are this sweep's), the others trained in order;
- `summary`: the runs' liveness, the per-layer charts, the comparison and the W&B summary run.

Callers import from `reviveformer.sweep`; the names below are its interface.

The contract: docs/design.md, "Interfaces" (sweep folders).
"""

from __future__ import annotations

from reviveformer.sweep.grid import (
    RESERVED_KEYS,
    PlannedRun,
    cell_names,
    parse_grid,
    parse_seeds,
    plan_runs,
    run_configs,
)
from reviveformer.sweep.record import (
    SWEEP_FILE,
    check_definition,
    definition_differences,
    read_record,
    sweep_definition,
    write_definition,
    write_summary,
)
from reviveformer.sweep.runs import (
    check_finished_run,
    finished_runs,
    is_finished,
    restart_unresumable,
    train_runs,
)
from reviveformer.sweep.summary import final_liveness, mean_liveness_per_cell, summarise_sweep

__all__ = [
    "RESERVED_KEYS",
    "SWEEP_FILE",
    "PlannedRun",
    "cell_names",
    "check_definition",
    "check_finished_run",
    "definition_differences",
    "final_liveness",
    "finished_runs",
    "is_finished",
    "mean_liveness_per_cell",
    "parse_grid",
    "parse_seeds",
    "plan_runs",
    "read_record",
    "restart_unresumable",
    "run_configs",
    "summarise_sweep",
    "sweep_definition",
    "train_runs",
    "write_definition",
    "write_summary",
]
