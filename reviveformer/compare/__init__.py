"""Side-by-side comparison of training runs: one table row per run, and figures with one line per run.

Runs come from local run directories (`config.yaml`, `metrics.jsonl`, `liveness/epoch_*.json`, written by
`reviveformer train`) or from a W&B group. Both are turned into the same `RunData`, so the table and the
figures are built by the same code whichever way the runs arrived.

One module per job, each importing only the ones above it:

- `runs`: reading runs (run directories, W&B groups) into `RunData`;
- `summary`: one table row per run;
- `seeds`: runs that differ only in `train.seed` grouped into arms, their mean and sd, the differences to the
  reference arm, and over task sequences the plasticity numbers (the statistics are `reviveformer.stats`);
- `tables`: the rows as cells, Markdown and console text;
- `outputs`: compare.md, compare.json, seeds.json, plasticity.json and the figures.

Callers import from `reviveformer.compare`; the names below are its interface.

The contract: docs/design.md, "Interfaces" (compare, sweep folders, seed groups).
"""

from __future__ import annotations

from reviveformer.compare.outputs import (
    compare_runs,
    incomplete_note,
    plasticity_note,
    write_band_figures,
    write_comparison,
    write_figures,
    write_plasticity_figure,
)
from reviveformer.compare.runs import (
    WANDB_HINT,
    RunData,
    check_distinct,
    fetch_wandb,
    liveness_from_rows,
    load_run,
    load_runs,
    rows_from_wandb_history,
    unique_names,
)
from reviveformer.compare.seeds import (
    SeedGroup,
    differences,
    group_row,
    group_seeds,
    plasticity,
    reference_group,
    seed_runs,
    seed_summary,
    settings,
)
from reviveformer.compare.summary import (
    DEFAULT_ACTIVATION,
    TASK_COLUMNS,
    arm_of,
    has_tasks,
    site_dead_ratio,
    sites_of,
    summarise,
    summarise_all,
    task_numbers,
)
from reviveformer.compare.tables import (
    MISSING,
    difference_cells,
    group_cells,
    plasticity_arm_cells,
    plasticity_difference_cells,
    plasticity_gap_cells,
    render_markdown,
    render_text,
    table_cells,
)

__all__ = [
    "DEFAULT_ACTIVATION",
    "MISSING",
    "TASK_COLUMNS",
    "WANDB_HINT",
    "RunData",
    "SeedGroup",
    "arm_of",
    "check_distinct",
    "compare_runs",
    "difference_cells",
    "differences",
    "fetch_wandb",
    "group_cells",
    "group_row",
    "group_seeds",
    "has_tasks",
    "incomplete_note",
    "liveness_from_rows",
    "load_run",
    "load_runs",
    "plasticity",
    "plasticity_arm_cells",
    "plasticity_difference_cells",
    "plasticity_gap_cells",
    "plasticity_note",
    "reference_group",
    "render_markdown",
    "render_text",
    "rows_from_wandb_history",
    "seed_runs",
    "seed_summary",
    "settings",
    "site_dead_ratio",
    "sites_of",
    "summarise",
    "summarise_all",
    "table_cells",
    "task_numbers",
    "unique_names",
    "write_band_figures",
    "write_comparison",
    "write_figures",
    "write_plasticity_figure",
]
