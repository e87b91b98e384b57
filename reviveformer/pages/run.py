"""The report page of one run (`RUN/report.html`): its status and numbers, its figures, its revivals and
alerts, capacity and settings.

Everything here reads what a run has written (`config.yaml`, `metrics.jsonl`, `alerts.jsonl`, `liveness/`),
through `compare.load_run`, so a page can be made for a run that is still going or was killed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reviveformer import compare, figures, metric_keys
from reviveformer.compare import MISSING, RunData
from reviveformer.pages.html import cards, escape, figure, flatten, fmt, page, table
from reviveformer.paths import check_out_file
from reviveformer.revival.describe import describer, totals_line
from reviveformer.revival.events import RevivalEvent, revival_events
from reviveformer.run_files import atomic_write, last, last_histograms, read_alerts, row_at
from reviveformer.run_status import read_status

REPORT_FILE = "report.html"
RUN_FIGURES = ("loss", "tasks", "dead-over-training", "frequency-heatmap", "dead-per-layer", "histograms")
"""The figures of a run (`run_figures` keys, element ids `<prefix>-<name>`), in the compare page's row order."""


def epoch_ends(rows: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Step -> number (1-based) of the epoch that ended there (the epoch-end log carries `epoch`, 0-based)."""
    return {int(r["step"]): int(r["epoch"]) + 1 for r in rows if "epoch" in r and "step" in r}


def revival_details(event_row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-layer numbers of one revival from its metrics row (`revival/layer_<i>/<name>`)."""
    layers: dict[int, dict[str, Any]] = {}
    for key, value in event_row.items():
        m = metric_keys.parse_revival_key(key)
        if m is not None and (layer := m[1]) is not None:
            layers.setdefault(layer, {"layer": layer})[m[0]] = int(round(float(value)))
    return [layers[i] for i in sorted(layers)]


def _revival_table(
    rows: Sequence[Mapping[str, Any]], events: Sequence[RevivalEvent], method: str | None
) -> str:
    """The run's revivals, one row each, in the columns its method describes them by (`Reviver.event_columns`)."""
    if not events:
        return "<p>No revival in this run (revival.method is none, or no revival point was reached yet).</p>"
    ends = epoch_ends(rows)
    columns = describer(method)[0].event_columns
    headers = ["#", "step", "when"] + [header for header, _ in columns]
    cells = [
        [e.number, e.step, _when(e.step, ends)] + [f"{getattr(e, field):,}" for _, field in columns]
        for e in events
    ]
    numeric = [True, True, False] + [True] * (len(headers) - 3)
    return (
        f"<p>{escape(totals_line(method, events))}. Units revived: dead (ReDo: dormant) at the previous "
        "revival and not any more; the first revival has nothing to compare with.</p>"
        + table(headers, cells, numeric, table_id="revival-events")
        + _before_after(rows, events[-1])
    )


def _before_after(rows: Sequence[Mapping[str, Any]], event: RevivalEvent) -> str:
    """Dead ratio per site before the last revival (what it decided from) and after it (measured at the end)."""
    before = {
        site: v
        for k, v in row_at(rows, event.step, metric_keys.REVIVAL_COUNT).items()
        if (site := metric_keys.parse_dead_ratio_before_key(k)) is not None
    }
    after = {}
    for row in rows:
        after.update(
            {
                site: v
                for k, v in row.items()
                if (site := metric_keys.parse_dead_ratio_after_key(k)) is not None
            }
        )
    if not before:
        return ""
    cells = [
        [site, f"{v:.1%}", f"{after[site]:.1%}" if site in after else MISSING] for site, v in before.items()
    ]
    return f"<h3>Dead ratio around the last revival (step {event.step})</h3>" + table(
        ["site", "before (the measurement it decided from)", "after (measured at the end of the run)"],
        cells,
        [False, True, True],
        table_id="revival-before-after",
    )


def _when(step: int, ends: Mapping[int, int]) -> str:
    return f"end of epoch {ends[step]}" if step in ends else "during training"


def _alerts_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    if not alerts:
        return "<p>No alert was raised.</p>"
    cols = ["step", "rule", "site", "layer", "metric", "value", "threshold", "when", "action"]
    cells = [
        [
            a.get("step", ""),
            a.get("rule", ""),
            a.get("site", ""),
            a.get("layer", ""),
            a.get("metric", ""),
            fmt(a.get("value"), ".3f"),
            fmt(a.get("threshold"), ".3f"),
            a.get("when", ""),
            a.get("action", ""),
        ]
        for a in alerts
    ]
    numeric = [True, False, False, True, False, True, True, False, False]
    return f"<p>{len(alerts)} alert{'s' * (len(alerts) != 1)} raised.</p>" + table(
        cols, cells, numeric, table_id="alerts"
    )


CAPACITY_KEYS = ("alive_units", "alive_fraction", "effective_params", "effective_param_fraction")


def capacity_numbers(run: RunData) -> dict[str, float]:
    """The last logged `capacity/<name>` values (after any revival at that step)."""
    out = {}
    for key in CAPACITY_KEYS:
        if (v := last(run.metrics, metric_keys.capacity_key(key))) is not None:
            out[key] = v
    return out


def _capacity_table(run: RunData) -> str:
    cap = capacity_numbers(run)
    if not cap:
        return "<p>No capacity numbers yet (they need liveness at site mlp_post).</p>"
    fmt = {
        "alive_units": lambda v: f"{int(v):,}",
        "effective_params": lambda v: f"{int(v):,}",
        "alive_fraction": lambda v: f"{v:.1%}",
        "effective_param_fraction": lambda v: f"{v:.1%}",
    }
    cells = [[k, fmt[k](v)] for k, v in cap.items()]
    return (
        "<p>At the last logged step, after any revival there: MLP units not dead (site mlp_post) and "
        "parameters that do not belong only to dead units or to pruned weights.</p>"
        + table(["capacity", "value"], cells, [False, True], table_id="capacity")
    )


def _run_status(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> str:
    """What the run did and what final/ holds, from status.json; a folder from before status files says what
    its files show and no more (final/ there does not say at which step, nor that the run ended)."""
    last_step = max((int(r["step"]) for r in rows if "step" in r), default=0)
    status = read_status(run_dir)
    if status.state != "legacy":
        return f"{status.sentence()}; last logged step {last_step}"
    if status.has_final:
        return f"final model present (no status.json, so not known whether it is of the last step); last logged step {last_step}"
    return f"in progress or stopped: last logged step {last_step}, no final model yet"


def run_figures(run: RunData, hists, prefix: str = "fig") -> dict[str, str]:
    """The figures of one run that it has data for, in page order: {name: html} (element ids
    `<prefix>-<name>`)."""
    rows = run.metrics
    liveness = run.liveness or {}
    has_freq = any("frequency" in e for layers in (liveness.get("sites") or {}).values() for e in layers)
    steps = [e.step for e in revival_events(rows)]
    marks = "; dotted red lines: revivals" if steps else ""
    out = {
        "loss": figure(
            f"{prefix}-loss",
            "Loss curves",
            lambda: figures.mark_revivals(figures.loss_curves_figure(rows), steps),
            "training loss per log window, validation loss at each evaluation" + marks,
        ),
        "dead-over-training": figure(
            f"{prefix}-dead-over-training",
            "Dead ratio over training per site and layer",
            lambda: figures.mark_revivals(figures.dead_ratio_over_training_figure(rows), steps),
            "training windows and epoch-end measurements" + marks,
        ),
    }
    if compare.has_tasks(run):
        out["tasks"] = figure(
            f"{prefix}-tasks",
            "End-of-task loss and dead ratio against the task",
            lambda: figures.plasticity_figure({run.name: [rows]}, title="Over the task sequence"),
            "at each task's end: training loss of its last log window, its held-out loss, the dead ratio; "
            "shaded: the last half of the tasks",
        )
    if has_freq:
        out["frequency-heatmap"] = figure(
            f"{prefix}-frequency-heatmap",
            "Firing frequency heatmap (last epoch)",
            lambda: figures.frequency_heatmap_figure(liveness),
        )
    if liveness.get("sites"):
        out["dead-per-layer"] = figure(
            f"{prefix}-dead-per-layer",
            "Dead ratio per layer (last epoch)",
            lambda: figures.dead_ratio_per_layer_figure(liveness),
        )
    if hists:
        out["histograms"] = figure(
            f"{prefix}-histograms",
            "Activation histograms (last epoch)",
            lambda: figures.activation_histograms_figure(hists),
        )
    return out


def run_report_html(run_dir: str | Path) -> str:
    """The report page of one run directory (reads its files only)."""
    path = Path(run_dir)
    run = compare.load_run(path)
    rows = run.metrics
    hists = last_histograms(path)
    events = revival_events(rows)
    alerts = read_alerts(path)
    status = _run_status(path, rows)
    shown = run_figures(run, hists)
    body = [
        f"<h1>Run {escape(run.name)}</h1>",
        f'<p class="sub">{escape(path.resolve())}: {escape(status)}. Written by reviveformer from '
        "the run's own files (config.yaml, metrics.jsonl, alerts.jsonl, liveness/).</p>",
        cards(_cards(run, status, events, alerts)),
        "<h2>Training</h2>",
        shown.pop("loss"),
        *([shown.pop("tasks")] if "tasks" in shown else []),
        "<h2>Neuron liveness</h2>",
        "<p>Dead ratio: units that fired on fewer than <code>liveness.dead_frequency</code> of the observed "
        "tokens, per site and layer. The heatmap, the per-layer ratios and the histograms are of the last "
        "epoch-end measurement (validation split).</p>",
        *shown.values(),
    ]
    if run.liveness is None:
        body.append('<p class="missing">No liveness measurement yet.</p>')
    if not hists:
        body.append('<p class="missing">No activation histograms yet (written at each epoch end).</p>')
    body += [
        "<h2>Revival</h2>",
        _revival_table(rows, events, (run.config.get("revival") or {}).get("method")),
    ]
    if events and (details := revival_details(row_at(rows, events[-1].step, metric_keys.REVIVAL_COUNT))):
        body.append(
            figure(
                "fig-revival-per-layer",
                "Revival per layer (last revival)",
                lambda: figures.revived_per_layer_figure(details, title="Last revival per layer"),
            )
        )
    body += [
        "<h2>Alerts</h2>",
        _alerts_table(alerts),
        "<h2>Capacity</h2>",
        _capacity_table(run),
        "<h2>Settings</h2>",
        f"<details open><summary>config.yaml ({len(flatten(run.config))} settings)</summary>"
        + table(["setting", "value"], flatten(run.config), table_id="settings")
        + "</details>",
    ]
    return page(f"reviveformer run {run.name}", "\n".join(body))


def _cards(
    run: RunData, status: str, events: Sequence[RevivalEvent], alerts: Sequence[Any]
) -> list[tuple[str, str]]:
    """The numbers at the top of the page: (label, value)."""
    summary = compare.summarise(run)
    out = [
        ("status", status),
        ("final validation loss", fmt(last(run.metrics, metric_keys.VAL_LOSS), ".4f")),
        ("best validation loss", fmt(summary["best_val_loss"], ".4f")),
        ("last training loss", fmt(last(run.metrics, metric_keys.TRAIN_LOSS), ".4f")),
        ("tokens/s (median)", fmt(summary["tokens_per_s"], ",.0f")),
    ]
    out += [
        (f"dead ratio {site}", fmt(summary.get(f"dead_ratio/{site}"), ".1%"))
        for site in compare.sites_of(run)
    ]
    if events:
        out.append(("revivals", str(len(events))))
    out.append(("alerts", str(len(alerts))))
    return out


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the report page of a run and write it (default `RUN/report.html`); returns its path."""
    path = Path(run_dir)
    text = run_report_html(path)  # built in full before anything is written
    target = check_out_file(out) if out else path / REPORT_FILE
    return atomic_write(target, text)
