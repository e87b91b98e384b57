"""The comparison page (`compare.html`): the table of `compare.summarise_all` rows, the arms over seeds, the
plasticity tables of task sequences, the comparison figures, then each run's own figures side by side.

It is written beside compare.md from the result of `compare.write_comparison`, and reads only what that
result and the runs' own files hold.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reviveformer import compare
from reviveformer.compare import RunData
from reviveformer.pages.html import escape, page, table
from reviveformer.pages.run import RUN_FIGURES, run_figures
from reviveformer.revival.describe import totals_line
from reviveformer.revival.events import revival_events
from reviveformer.run_files import atomic_write, last_histograms, read_alerts
from reviveformer.stats import PAIRED_METHOD

COMPARE_FILE = "compare.html"


def comparison_html(
    runs: Sequence[RunData],
    rows: Sequence[Mapping[str, Any]],
    figures: Mapping[str, Path],
    seeds: Mapping[str, Any] | None = None,
    plasticity: Mapping[str, Any] | None = None,
) -> str:
    """The comparison page: the table of `compare.summarise_all` rows, the arms over seeds (mean +- sd and the
    differences to the reference arm, when `seeds` has them), the plasticity tables (when the runs have task
    sequences: `compare.plasticity`'s result), the comparison figures (PNGs written by `compare.write_figures`,
    the seed bands and the plasticity figure among them), then each run's own figures side by side."""
    headers, cells, numeric = compare.table_cells(rows)
    body = [
        f"<h1>Comparison of {len(runs)} runs</h1>",
        '<p class="sub">Dead ratios at the last epoch-end measurement; capacity after any revival; units '
        f"revived summed over revivals; tokens/s the median. {compare.MISSING}: the run has no such "
        "value.</p>",
        table(headers, cells, numeric, table_id="comparison"),
    ]
    if any(not run.complete for run in runs):
        body.append(
            f'<p class="missing">{escape(compare.incomplete_note(runs, seeds).replace("**", ""))}</p>'
        )
    if seeds:
        body += _seeds(seeds)
    if plasticity:
        body += _plasticity(plasticity)
    body.append(
        "<h2>Runs</h2><ul>"
        + "".join(f"<li><b>{escape(r.name)}</b>: {escape(r.source)}</li>" for r in runs)
        + "</ul>"
    )
    if figures:
        body += _side_by_side(figures)
    body.append(
        "<h2>Each run</h2><p>One column per run; a row per figure, so the same figure of each run "
        "sits side by side.</p>"
    )
    body.append(_each_run(runs))
    return page(f"reviveformer comparison of {len(runs)} runs", "\n".join(body))


def _seeds(seeds: Mapping[str, Any]) -> list[str]:
    """The arms over seeds, and the differences to the reference arm when there are any."""
    body = [
        "<h2>Arms over seeds</h2>",
        '<p class="sub">Runs that differ only in their seed are one arm: each number is the mean &plusmn; the '
        "sample standard deviation over its n seeds.</p>",
        table(*compare.group_cells(seeds["groups"]), table_id="seeds"),
    ]
    if seeds["differences"]:
        body += [
            f"<h2>Difference to {escape(seeds['reference'])} in final validation loss</h2>",
            f'<p class="sub">Arm minus {escape(seeds["reference"])}, with a {escape(seeds["method"])}; and paired '
            "over the seeds both arms ran (same initial weights and data order), the mean of the per-seed "
            f"differences with a {escape(PAIRED_METHOD)}. An interval that contains 0 does not tell the arms "
            "apart at that level.</p>",
            table(*compare.difference_cells(seeds["differences"]), table_id="differences"),
        ]
    return body


def _plasticity(plasticity: Mapping[str, Any]) -> list[str]:
    """The plasticity tables of task sequences: per arm, the gap, and the differences per loss."""
    body = [
        "<h2>Plasticity over the task sequence</h2>",
        f'<p class="sub">{escape(compare.plasticity_note(plasticity).replace("`", ""))}</p>',
        table(*compare.plasticity_arm_cells(plasticity), table_id="plasticity"),
    ]
    if plasticity["gaps"]:
        body += [
            "<h3>Plasticity gap (trains on - fresh start)</h3>",
            table(*compare.plasticity_gap_cells(plasticity), table_id="plasticity-gap"),
        ]
    for metric, name in (("train", "end-of-task training loss"), ("val", "held-out loss")):
        body += [
            f"<h3>Differences in {name}</h3>",
            table(*compare.plasticity_difference_cells(plasticity, metric), table_id=f"plasticity-{metric}"),
        ]
    return body


def _side_by_side(figures: Mapping[str, Path]) -> list[str]:
    """The comparison figures (PNG files), embedded."""
    body = ['<h2>Side by side</h2><div class="wrap">']
    for i, (title, png) in enumerate(figures.items()):
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        body.append(
            f'<figure id="cmp-{i}"><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(title)}</figcaption></figure>"
        )
    body.append("</div>")
    return body


def _each_run(runs: Sequence[RunData]) -> str:
    """A column per run: its name and revival and alert totals, then a row per figure kind (a run's own
    figures from its run folder; a W&B run's from its metrics)."""
    per_run, notes = [], []
    for i, run in enumerate(runs):
        source = Path(run.source) if run.source else None
        local = source is not None and source.is_dir()
        per_run.append(run_figures(run, last_histograms(source) if local else None, prefix=f"run{i}"))
        events = revival_events(run.metrics)
        method = (run.config.get("revival") or {}).get("method")
        alerts = len(read_alerts(source)) if local else 0
        notes.append(
            f"{totals_line(method, events) if events else 'no revival'}; {alerts} alert"
            f"{'s' * (alerts != 1)}" + ("" if local else " (alerts are read from run directories only)")
        )
    cells = [
        f"<div><h3>{escape(run.name)}</h3><p>{escape(note)}</p></div>"
        for run, note in zip(runs, notes, strict=True)
    ]
    kinds = [k for k in RUN_FIGURES if any(k in figs for figs in per_run)]
    for kind in kinds:
        cells += [
            f"<div>{figs.get(kind, '<p class=missing>not available for this run</p>')}</div>"
            for figs in per_run
        ]
    return (
        f'<div class="side" style="grid-template-columns:repeat({len(runs)},minmax(0,1fr))">'
        + "".join(cells)
        + "</div>"
    )


def write_comparison_report(runs: Sequence[RunData], result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write `compare.html` into `out_dir` from a `compare.write_comparison` result; returns its path."""
    return atomic_write(
        Path(out_dir) / COMPARE_FILE,
        comparison_html(
            runs, result["rows"], result["figures"], result.get("seeds"), result.get("plasticity")
        ),
    )
