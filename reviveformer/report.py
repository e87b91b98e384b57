"""What a run tells a person: one console line per revival event, the revival totals of the summary, and a
report page (`RUN/report.html`, or `compare.html` for several runs side by side).

Everything here reads what a run has written (`config.yaml`, `metrics.jsonl`, `alerts.jsonl`, `liveness/`),
through `compare.load_run`, so a page can be made for a run that is still going or was killed. A page is one
self-contained HTML file: figures are embedded as base64 PNG, nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from reviveformer import compare, metric_keys, plots
from reviveformer.compare import RunData
from reviveformer.paths import check_out_file
from reviveformer.run_status import read_status
from reviveformer.stats import PAIRED_METHOD

log = logging.getLogger("reviveformer")

REPORT_FILE = "report.html"
COMPARE_FILE = "compare.html"
HISTOGRAM_FILE = re.compile(r"^activations_epoch_(\d+)\.json$")
METHOD_NAMES = {
    "synaptic_stripping": "synaptic stripping",
    "redo": "ReDo",
    "grama": "GraMa",
    "continual_backprop": "Continual Backprop",
    "shrink_perturb": "shrink and perturb",
    "l2_init": "L2 toward init",
    "fresh_start": "fresh start",
}
"""How the console and the pages name the built-in methods; another method (a plug-in) is named as written."""


# ---------------------------------------------------------------------------------------------- revival


@dataclass
class RevivalEvent:
    """One revival pass, as its metrics (`revival/...`, design.md) give it."""

    step: int
    number: int
    """revival/count: 1 for the run's first revival."""
    method: str
    """The run's revival.method (told apart by their metrics when the run's config is not at hand)."""
    dead_units: int
    revived_units: int
    """Units dead (stripping) or dormant (ReDo) at the previous revival and not any more."""
    stripped_now: int = 0
    pruned_total: int = 0
    stripped_total: int = 0
    dormant_units: int = 0
    """ReDo: units re-initialised by this revival."""
    reinitialised_total: int = 0
    kind: str = "strip"
    """What its metrics say it did: strip (weights zeroed), reinitialise (units re-initialised: ReDo, GraMa) or
    other (a plug-in's own metrics: only the units found and revived are shown)."""

    @property
    def name(self) -> str:
        return METHOD_NAMES.get(self.method, self.method)

    def line(self, when: str = "") -> str:
        """The console line of this event."""
        at = f"revival {self.number} at step {self.step}" + (f" ({when})" if when else "")
        since = (
            "first revival, nothing to compare with yet"
            if self.number == 1
            else f"{self.revived_units:,} units revived since the previous revival"
        )
        if self.kind == "reinitialise":
            return (
                f"{at}, {self.name}: {self.dormant_units:,} dormant units re-initialised "
                f"({self.dead_units:,} dead); {since}"
            )
        if self.kind == "other":
            return f"{at}, {self.name}: {self.dead_units:,} dead units found; {since}"
        return (
            f"{at}, {self.name}: {self.dead_units:,} dead units found, {self.stripped_now:,} weights "
            f"stripped ({self.pruned_total:,} held at zero in all); {since}"
        )


def revival_event(metrics: Mapping[str, Any], step: int, method: str | None = None) -> RevivalEvent | None:
    """The event of one revival's metrics (a `revive` return value or a metrics.jsonl row); None if none.
    `method`: the run's revival.method; without it, it is guessed from the metrics (ReDo or stripping)."""
    if metric_keys.REVIVAL_COUNT not in metrics:
        return None

    def n(key: str) -> int:
        return int(round(float(metrics.get(metric_keys.revival_key(key), 0) or 0)))

    if metric_keys.revival_key("reinitialised_total") in metrics:
        kind = "reinitialise"
    elif (
        metric_keys.revival_key("stripped_now") in metrics
        or metric_keys.revival_key("pruned_total") in metrics
    ):
        kind = "strip"
    else:
        kind = "other"
    method = method or {"reinitialise": "redo", "strip": "synaptic_stripping"}.get(kind, "unknown")
    return RevivalEvent(
        step=step,
        number=n("count"),
        method=method,
        dead_units=n("dead_units"),
        revived_units=n("revived_units"),
        stripped_now=n("stripped_now"),
        pruned_total=n("pruned_total"),
        stripped_total=n("stripped_total"),
        dormant_units=n("dormant_units"),
        reinitialised_total=n("reinitialised_total"),
        kind=kind,
    )


def revival_events(rows: Sequence[Mapping[str, Any]], method: str | None = None) -> list[RevivalEvent]:
    """Every revival of a run, by step (a resumed run logs a step again: the last row of a step counts)."""
    by_step: dict[int, RevivalEvent] = {}
    for row in rows:
        if "step" in row and (event := revival_event(row, int(row["step"]), method)) is not None:
            by_step[event.step] = event
    return [by_step[s] for s in sorted(by_step)]


def epoch_ends(rows: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Step -> number (1-based) of the epoch that ended there (the epoch-end log carries `epoch`, 0-based)."""
    return {int(r["step"]): int(r["epoch"]) + 1 for r in rows if "epoch" in r and "step" in r}


def revival_totals_line(events: Sequence[RevivalEvent]) -> str:
    """The summary's revival line: events, units found and revived, weights stripped or units re-initialised."""
    last = events[-1]
    revived = sum(e.revived_units for e in events)
    head = f"revival ({last.name}): {len(events)} event{'s' * (len(events) != 1)}"
    if last.kind == "other":
        return f"{head}, {sum(e.dead_units for e in events):,} dead units found in all, {revived:,} units revived"
    if last.kind == "reinitialise":
        return f"{head}, {last.reinitialised_total:,} dormant units re-initialised in all, {revived:,} units revived"
    return (
        f"{head}, {sum(e.dead_units for e in events):,} dead units found in all, {last.stripped_total:,} "
        f"weights stripped ({last.pruned_total:,} held at zero now), {revived:,} units revived"
    )


# ---------------------------------------------------------------------------------------------- reading


def last_histograms(run_dir: Path) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] | None:
    """The activation histograms of the last epoch end (`liveness/activations_epoch_NNN.json`), or None."""
    files = [
        (int(m[1]), p)
        for p in (run_dir / "liveness").glob("activations_epoch_*.json")
        if (m := HISTOGRAM_FILE.match(p.name))
    ]
    if not files:
        return None
    try:
        data = json.loads(max(files)[1].read_text(encoding="utf-8"))
        edges = np.asarray(data["edges"], dtype=np.float64)
        return {
            (site, int(e["layer"])): (np.asarray(e["counts"], dtype=np.int64), edges)
            for site, layers in data["sites"].items()
            for e in layers
        }
    except (OSError, ValueError, KeyError, TypeError) as e:  # a half-written file of a killed run
        log.warning(
            "%s: activation histograms not readable (%s); the report leaves them out", max(files)[1], e
        )
        return None


def histograms_json(hists: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The `activations_epoch_NNN.json` content: {"edges": [...], "sites": {site: [{"layer", "counts"}]}}."""
    edges = next(iter(hists.values()))[1]
    sites: dict[str, list[dict[str, Any]]] = {}
    for (site, layer), (counts, _) in hists.items():
        sites.setdefault(site, []).append({"layer": layer, "counts": [int(c) for c in counts]})
    return {"edges": [float(e) for e in edges], "sites": sites}


def read_alerts(run_dir: Path) -> list[dict[str, Any]]:
    """The alerts of `alerts.jsonl` (a line cut short by a kill is skipped)."""
    path = run_dir / "alerts.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- figures


def loss_curves_figure(rows: Sequence[Mapping[str, Any]], title: str = "Loss") -> Figure:
    """Training loss (per log window) and validation loss over optimizer steps."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for key, label, color in (
        (metric_keys.TRAIN_LOSS, "training", "tab:blue"),
        (metric_keys.VAL_LOSS, "validation", "tab:orange"),
    ):
        series = _series(rows, key)
        if series:
            steps, vals = zip(*series, strict=True)
            ax.plot(
                steps, vals, color=color, lw=1.8, label=label, marker="o" if len(steps) < 12 else None, ms=4
            )
            drawn += 1
    if not drawn:
        raise ValueError("metrics hold no train/loss or val/loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(title, fontweight="bold")
    return fig


def revival_details(event_row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-layer numbers of one revival from its metrics row (`revival/layer_<i>/<name>`)."""
    layers: dict[int, dict[str, Any]] = {}
    for key, value in event_row.items():
        m = metric_keys.parse_revival_key(key)
        if m is not None and (layer := m[1]) is not None:
            layers.setdefault(layer, {"layer": layer})[m[0]] = int(round(float(value)))
    return [layers[i] for i in sorted(layers)]


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric by step; a step logged again (a resumed run) keeps its last value."""
    by_step = {
        int(r["step"]): float(r[key])
        for r in rows
        if "step" in r and isinstance(r.get(key), (int, float)) and np.isfinite(r[key])
    }
    return sorted(by_step.items())


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    series = _series(rows, key)
    return series[-1][1] if series else None


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plots.DPI)
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig_id: str, title: str, build, caption: str = "") -> str:
    """An embedded figure, or a note saying why it is missing (a figure must never stop a report)."""
    try:
        data = _png(build())
    except Exception as e:
        log.warning("report: figure %r not drawn: %s: %s", title, type(e).__name__, e)
        return (
            f'<p class="missing" id="{fig_id}">{_e(title)}: not drawn ({_e(type(e).__name__)}: {_e(e)})</p>'
        )
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure id="{fig_id}"><img alt="{_e(title)}" src="data:image/png;base64,{data}">{cap}</figure>'


# ---------------------------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Sequence[bool] | None = None,
    table_id: str = "",
) -> str:
    numeric = numeric or [False] * len(headers)
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(
        f'<th class="{"num" if n else ""}">{_e(h)}</th>' for h, n in zip(headers, numeric, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if n else ""}">{_e(c)}</td>' for c, n in zip(row, numeric, strict=True))
        + "</tr>"
        for row in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, name + ".")
        else:
            out.append((name, json.dumps(value) if isinstance(value, (list, dict)) else str(value)))
    return out


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2125;
background:#f6f7f9;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:32px 0 10px;border-bottom:1px solid #d5d9de;
padding-bottom:4px}h3{font-size:1.05em;margin:18px 0 6px}
.sub{color:#59636e;margin:0 0 16px}.missing{color:#8a6d00;background:#fff8db;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:.92em}
th,td{border:1px solid #d5d9de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0 18px;background:#fff;border:1px solid #d5d9de;border-radius:6px;padding:8px;
display:inline-block;max-width:calc(100% - 18px)}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#59636e;font-size:.88em;margin-top:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0 4px}
.card{background:#fff;border:1px solid #d5d9de;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.25em}.card span{color:#59636e;font-size:.85em}
.side{display:grid;gap:14px}.side>div{min-width:0}.side figure{width:calc(100% - 18px)}
details{margin:6px 0}summary{cursor:pointer;color:#33506e}
.wrap{display:flex;flex-wrap:wrap;gap:0 14px;align-items:flex-start}.wrap figure{max-width:calc(50% - 25px)}
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><main>{body}</main></body></html>\n"
    )


def _fmt(value: float | None, fmt: str) -> str:
    return compare.MISSING if value is None else format(value, fmt)


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def _revival_table(rows: Sequence[Mapping[str, Any]], events: Sequence[RevivalEvent]) -> str:
    if not events:
        return "<p>No revival in this run (revival.method is none, or no revival point was reached yet).</p>"
    ends = epoch_ends(rows)
    if events[-1].kind == "reinitialise":
        headers = ["#", "step", "when", "dormant units re-initialised", "dead units", "units revived"]
        cells = [
            [
                e.number,
                e.step,
                _when(e.step, ends),
                f"{e.dormant_units:,}",
                f"{e.dead_units:,}",
                f"{e.revived_units:,}",
            ]
            for e in events
        ]
    else:
        headers = [
            "#",
            "step",
            "when",
            "dead units found",
            "weights stripped",
            "held at zero in all",
            "units revived",
        ]
        cells = [
            [
                e.number,
                e.step,
                _when(e.step, ends),
                f"{e.dead_units:,}",
                f"{e.stripped_now:,}",
                f"{e.pruned_total:,}",
                f"{e.revived_units:,}",
            ]
            for e in events
        ]
    numeric = [True, True, False] + [True] * (len(headers) - 3)
    return (
        f"<p>{_e(revival_totals_line(events))}. Units revived: dead (ReDo: dormant) at the previous "
        "revival and not any more; the first revival has nothing to compare with.</p>"
        + _table(headers, cells, numeric, table_id="revival-events")
        + _before_after(rows, events[-1])
    )


def _before_after(rows: Sequence[Mapping[str, Any]], last: RevivalEvent) -> str:
    """Dead ratio per site before the last revival (what it decided from) and after it (measured at the end)."""
    before = {
        site: v
        for k, v in _row_at(rows, last.step, metric_keys.REVIVAL_COUNT).items()
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
        [site, f"{v:.1%}", f"{after[site]:.1%}" if site in after else compare.MISSING]
        for site, v in before.items()
    ]
    return f"<h3>Dead ratio around the last revival (step {last.step})</h3>" + _table(
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
            _fmt(a.get("value"), ".3f"),
            _fmt(a.get("threshold"), ".3f"),
            a.get("when", ""),
            a.get("action", ""),
        ]
        for a in alerts
    ]
    numeric = [True, False, False, True, False, True, True, False, False]
    return f"<p>{len(alerts)} alert{'s' * (len(alerts) != 1)} raised.</p>" + _table(
        cols, cells, numeric, table_id="alerts"
    )


CAPACITY_KEYS = ("alive_units", "alive_fraction", "effective_params", "effective_param_fraction")


def capacity_numbers(run: RunData) -> dict[str, float]:
    """The last logged `capacity/<name>` values (after any revival at that step)."""
    out = {}
    for key in CAPACITY_KEYS:
        if (v := _last(run.metrics, metric_keys.capacity_key(key))) is not None:
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
        + _table(["capacity", "value"], cells, [False, True], table_id="capacity")
    )


def _run_status(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> str:
    """What the run did and what final/ holds, from status.json; a folder from before status files says what
    its files show and no more (final/ there does not say at which step, nor that the run ended)."""
    last = max((int(r["step"]) for r in rows if "step" in r), default=0)
    status = read_status(run_dir)
    if status.state != "legacy":
        return f"{status.sentence()}; last logged step {last}"
    if status.has_final:
        return f"final model present (no status.json, so not known whether it is of the last step); last logged step {last}"
    return f"in progress or stopped: last logged step {last}, no final model yet"


def _mark_revivals(fig: Figure, steps: Sequence[int]) -> Figure:
    """Dotted vertical lines at the revival steps on every plot panel of `fig` (colour bars left alone)."""
    for ax in fig.axes:
        if ax.get_label() != "<colorbar>":
            for step in steps:
                ax.axvline(step, color="tab:red", ls=":", lw=1.2, alpha=0.8, zorder=1)
    return fig


def _run_figures(run: RunData, hists, prefix: str = "fig") -> dict[str, str]:
    """The figures of one run that it has data for, in page order: {name: html} (element ids
    `<prefix>-<name>`)."""
    rows = run.metrics
    liveness = run.liveness or {}
    has_freq = any("frequency" in e for layers in (liveness.get("sites") or {}).values() for e in layers)
    steps = [e.step for e in revival_events(rows)]
    marks = "; dotted red lines: revivals" if steps else ""
    out = {
        "loss": _figure(
            f"{prefix}-loss",
            "Loss curves",
            lambda: _mark_revivals(loss_curves_figure(rows), steps),
            "training loss per log window, validation loss at each evaluation" + marks,
        ),
        "dead-over-training": _figure(
            f"{prefix}-dead-over-training",
            "Dead ratio over training per site and layer",
            lambda: _mark_revivals(plots.dead_ratio_over_training_figure(rows), steps),
            "training windows and epoch-end measurements" + marks,
        ),
    }
    if compare.has_tasks(run):
        out["tasks"] = _figure(
            f"{prefix}-tasks",
            "End-of-task loss and dead ratio against the task",
            lambda: plots.plasticity_figure({run.name: [rows]}, title="Over the task sequence"),
            "at each task's end: training loss of its last log window, its held-out loss, the dead ratio; "
            "shaded: the last half of the tasks",
        )
    if has_freq:
        out["frequency-heatmap"] = _figure(
            f"{prefix}-frequency-heatmap",
            "Firing frequency heatmap (last epoch)",
            lambda: plots.frequency_heatmap_figure(liveness),
        )
    if liveness.get("sites"):
        out["dead-per-layer"] = _figure(
            f"{prefix}-dead-per-layer",
            "Dead ratio per layer (last epoch)",
            lambda: plots.dead_ratio_per_layer_figure(liveness),
        )
    if hists:
        out["histograms"] = _figure(
            f"{prefix}-histograms",
            "Activation histograms (last epoch)",
            lambda: plots.activation_histograms_figure(hists),
        )
    return out


def run_report_html(run_dir: str | Path) -> str:
    """The report page of one run directory (reads its files only)."""
    path = Path(run_dir)
    run = compare.load_run(path)
    rows = run.metrics
    hists = last_histograms(path)
    events = revival_events(rows, (run.config.get("revival") or {}).get("method"))
    alerts = read_alerts(path)
    summary = compare.summarise(run)
    sites = compare.sites_of(run)
    figures = _run_figures(run, hists)

    val = _last(rows, metric_keys.VAL_LOSS)
    cards = [
        ("status", _run_status(path, rows)),
        ("final validation loss", _fmt(val, ".4f")),
        ("best validation loss", _fmt(summary["best_val_loss"], ".4f")),
        ("last training loss", _fmt(_last(rows, metric_keys.TRAIN_LOSS), ".4f")),
        ("tokens/s (median)", _fmt(summary["tokens_per_s"], ",.0f")),
    ]
    cards += [(f"dead ratio {site}", _fmt(summary.get(f"dead_ratio/{site}"), ".1%")) for site in sites]
    if events:
        cards.append(("revivals", str(len(events))))
    cards.append(("alerts", str(len(alerts))))

    body = [
        f"<h1>Run {_e(run.name)}</h1>",
        f'<p class="sub">{_e(path.resolve())}: {_e(_run_status(path, rows))}. Written by reviveformer from '
        "the run's own files (config.yaml, metrics.jsonl, alerts.jsonl, liveness/).</p>",
        _cards(cards),
        "<h2>Training</h2>",
        figures.pop("loss"),
        *([figures.pop("tasks")] if "tasks" in figures else []),
        "<h2>Neuron liveness</h2>",
        "<p>Dead ratio: units that fired on fewer than <code>liveness.dead_frequency</code> of the observed "
        "tokens, per site and layer. The heatmap, the per-layer ratios and the histograms are of the last "
        "epoch-end measurement (validation split).</p>",
        *figures.values(),
    ]
    if run.liveness is None:
        body.append('<p class="missing">No liveness measurement yet.</p>')
    if not hists:
        body.append('<p class="missing">No activation histograms yet (written at each epoch end).</p>')
    body += ["<h2>Revival</h2>", _revival_table(rows, events)]
    if events:
        last_row = _row_at(rows, events[-1].step, metric_keys.REVIVAL_COUNT)
        details = revival_details(last_row)
        if details:
            body.append(
                _figure(
                    "fig-revival-per-layer",
                    "Revival per layer (last revival)",
                    lambda: plots.revived_per_layer_figure(details, title="Last revival per layer"),
                )
            )
    body += [
        "<h2>Alerts</h2>",
        _alerts_table(alerts),
        "<h2>Capacity</h2>",
        _capacity_table(run),
        "<h2>Settings</h2>",
        f"<details open><summary>config.yaml ({len(_flatten(run.config))} settings)</summary>"
        + _table(["setting", "value"], _flatten(run.config), table_id="settings")
        + "</details>",
    ]
    return _page(f"reviveformer run {run.name}", "\n".join(body))


def _row_at(rows: Sequence[Mapping[str, Any]], step: int, key: str) -> Mapping[str, Any]:
    """The last row of `step` holding `key`."""
    found: Mapping[str, Any] = {}
    for row in rows:
        if row.get("step") == step and key in row:
            found = row
    return found


def write_html(path: Path, text: str) -> Path:
    """Write `text` to `path` by way of a temporary file, so a reader never sees half a page."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the report page of a run and write it (default `RUN/report.html`); returns its path."""
    path = Path(run_dir)
    text = run_report_html(path)  # built in full before anything is written
    target = check_out_file(out) if out else path / REPORT_FILE
    return write_html(target, text)


# ---------------------------------------------------------------------------------------------- comparison


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
        _table(headers, cells, numeric, table_id="comparison"),
    ]
    if any(not run.complete for run in runs):
        body.append(f'<p class="missing">{_e(compare.incomplete_note(runs, seeds).replace("**", ""))}</p>')
    if seeds:
        body += [
            "<h2>Arms over seeds</h2>",
            '<p class="sub">Runs that differ only in their seed are one arm: each number is the mean &plusmn; the '
            "sample standard deviation over its n seeds.</p>",
            _table(*compare.group_cells(seeds["groups"]), table_id="seeds"),
        ]
        if seeds["differences"]:
            body += [
                f"<h2>Difference to {_e(seeds['reference'])} in final validation loss</h2>",
                f'<p class="sub">Arm minus {_e(seeds["reference"])}, with a {_e(seeds["method"])}; and paired '
                "over the seeds both arms ran (same initial weights and data order), the mean of the per-seed "
                f"differences with a {_e(PAIRED_METHOD)}. An interval that contains 0 does not tell the arms "
                "apart at that level.</p>",
                _table(*compare.difference_cells(seeds["differences"]), table_id="differences"),
            ]
    if plasticity:
        body += [
            "<h2>Plasticity over the task sequence</h2>",
            f'<p class="sub">{_e(compare.plasticity_note(plasticity).replace("`", ""))}</p>',
            _table(*compare.plasticity_arm_cells(plasticity), table_id="plasticity"),
        ]
        if plasticity["gaps"]:
            body += [
                "<h3>Plasticity gap (trains on - fresh start)</h3>",
                _table(*compare.plasticity_gap_cells(plasticity), table_id="plasticity-gap"),
            ]
        for metric, name in (("train", "end-of-task training loss"), ("val", "held-out loss")):
            body += [
                f"<h3>Differences in {name}</h3>",
                _table(
                    *compare.plasticity_difference_cells(plasticity, metric), table_id=f"plasticity-{metric}"
                ),
            ]
    body += [
        "<h2>Runs</h2><ul>"
        + "".join(f"<li><b>{_e(r.name)}</b>: {_e(r.source)}</li>" for r in runs)
        + "</ul>",
    ]
    if figures:
        body.append('<h2>Side by side</h2><div class="wrap">')
        for i, (title, png) in enumerate(figures.items()):
            data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
            body.append(
                f'<figure id="cmp-{i}"><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(title)}</figcaption></figure>"
            )
        body.append("</div>")
    body.append(
        "<h2>Each run</h2><p>One column per run; a row per figure, so the same figure of each run "
        "sits side by side.</p>"
    )
    per_run, notes = [], []
    for i, run in enumerate(runs):
        source = Path(run.source) if run.source else None
        local = source is not None and source.is_dir()
        per_run.append(_run_figures(run, last_histograms(source) if local else None, prefix=f"run{i}"))
        events = revival_events(run.metrics, (run.config.get("revival") or {}).get("method"))
        alerts = len(read_alerts(source)) if local else 0
        notes.append(
            f"{revival_totals_line(events) if events else 'no revival'}; {alerts} alert"
            f"{'s' * (alerts != 1)}" + ("" if local else " (alerts are read from run directories only)")
        )
    cells = [
        f"<div><h3>{_e(run.name)}</h3><p>{_e(note)}</p></div>" for run, note in zip(runs, notes, strict=True)
    ]
    kinds = [
        k
        for k in ("loss", "tasks", "dead-over-training", "frequency-heatmap", "dead-per-layer", "histograms")
        if any(k in figs for figs in per_run)
    ]
    for kind in kinds:
        cells += [
            f"<div>{figs.get(kind, '<p class=missing>not available for this run</p>')}</div>"
            for figs in per_run
        ]
    body.append(
        f'<div class="side" style="grid-template-columns:repeat({len(runs)},minmax(0,1fr))">'
        + "".join(cells)
        + "</div>"
    )
    return _page(f"reviveformer comparison of {len(runs)} runs", "\n".join(body))


def write_comparison_report(runs: Sequence[RunData], result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write `compare.html` into `out_dir` from a `compare.write_comparison` result; returns its path."""
    return write_html(
        Path(out_dir) / COMPARE_FILE,
        comparison_html(
            runs, result["rows"], result["figures"], result.get("seeds"), result.get("plasticity")
        ),
    )
