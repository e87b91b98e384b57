"""Reading and writing a run folder's files: metrics.jsonl rows and one metric's series, alerts.jsonl, the
activation histograms of `liveness/`, and `atomic_write`, the one way the package writes a file whole.

Readers here are forgiving: a run that is still going or was killed leaves a half-written last line, which is
skipped (with a warning for metrics.jsonl). The layout of a run folder: docs/design.md, "Interfaces".
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reviveformer import metric_keys

log = logging.getLogger("reviveformer")

METRICS_FILE = "metrics.jsonl"
ALERTS_FILE = "alerts.jsonl"
HISTOGRAM_FILE = re.compile(r"^activations_epoch_(\d+)\.json$")

Histograms = Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]]
"""(site, layer) -> (counts, bin edges): the activation histograms of one measurement."""


def atomic_write(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all: into a uniquely named file beside it (never a name a user
    holds; created with the usual permissions), then renamed over it, so a reader, or a run killed mid-write,
    sees the old file (or none) or the new one, never half of it. Returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------- metrics


def _jsonl_rows(path: Path, problem: Callable[[dict[str, Any]], str | None]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines run file that are what its format says. A line that is not a JSON object (a run
    killed mid-write) or whose row has a `problem` (a field of the wrong kind: a hand-edited or foreign file) is
    skipped, all of them named in one warning: file, line numbers and the first reason."""
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped.append((number, "not JSON"))
                continue
            why = "not a JSON object" if not isinstance(row, dict) else problem(row)
            if why is None:
                rows.append(row)
            else:
                skipped.append((number, why))
    if skipped:
        lines = ", ".join(str(n) for n, _ in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        log.warning("%s: skipped %d line(s) (line %s): %s", path, len(skipped), lines, skipped[0][1])
    return rows


def _whole(value: Any) -> bool:
    return _real(value) and math.isfinite(value) and value == int(value)


def _metrics_row_problem(row: dict[str, Any]) -> str | None:
    if "step" in row and not _whole(row["step"]):
        return f"step {row['step']!r} is not a whole number"
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file; a line that is not a JSON object (a run killed mid-write) or whose step is
    not a whole number is skipped, with one warning naming the file and lines."""
    return _jsonl_rows(Path(path), _metrics_row_problem)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(rows: Iterable[Mapping[str, Any]], key: str, *, finite: bool = True) -> list[tuple[int, float]]:
    """(step, value) of one metric, sorted by step: the rows whose `step` and `key` are numbers (not bools).

    A step logged again (a resumed run re-logs the steps after its checkpoint) keeps its last value, so a total
    does not count it twice. NaN and infinities are left out (`finite=True`: tables, cards, sums) or kept
    (`finite=False`: a figure, where a NaN draws a gap in its line, as the run logged it)."""
    by_step: dict[int, float] = {}
    for row in rows:
        value, step = row.get(key), row.get("step")
        if _real(value) and _real(step) and math.isfinite(step) and (not finite or math.isfinite(value)):
            by_step[int(step)] = float(value)
    return sorted(by_step.items())


def last(rows: Iterable[Mapping[str, Any]], key: str) -> float | None:
    """The finite value of `key` at the highest step that logged one, or None."""
    found = series(rows, key)
    return found[-1][1] if found else None


def task_ends(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Task index -> the finite numbers of the row logged at that task's end (the row holding `task/index`),
    by task; a task logged twice (a resumed run logs its end again) keeps its last row."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        index = row.get(metric_keys.TASK_INDEX)
        if not _real(index) or not math.isfinite(index):
            continue
        out[int(index)] = {k: float(v) for k, v in row.items() if _real(v) and math.isfinite(v)}
    return dict(sorted(out.items()))


def row_at(rows: Sequence[Mapping[str, Any]], step: int, key: str) -> Mapping[str, Any]:
    """The last row of `step` holding `key` (empty when there is none)."""
    found: Mapping[str, Any] = {}
    for row in rows:
        if row.get("step") == step and key in row:
            found = row
    return found


# ---------------------------------------------------------------------------------------------- alerts


def _alert_row_problem(row: dict[str, Any]) -> str | None:
    for key in ("step", "layer"):
        if key in row and not _whole(row[key]):
            return f"{key} {row[key]!r} is not a whole number"
    for key in ("value", "threshold"):
        if key in row and row[key] is not None and not _real(row[key]):
            return f"{key} {row[key]!r} is not a number"
    return None


def read_alerts(run_dir: Path) -> list[dict[str, Any]]:
    """The alerts of `alerts.jsonl`; a line cut short by a kill, or a row whose numbers are not numbers, is
    skipped with one warning naming the file and lines."""
    path = run_dir / ALERTS_FILE
    if not path.is_file():
        return []
    return _jsonl_rows(path, _alert_row_problem)


# ---------------------------------------------------------------------------------------------- histograms


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


def histograms_json(hists: Histograms) -> dict[str, Any]:
    """The `activations_epoch_NNN.json` content: {"edges": [...], "sites": {site: [{"layer", "counts"}]}}."""
    edges = next(iter(hists.values()))[1]
    sites: dict[str, list[dict[str, Any]]] = {}
    for (site, layer), (counts, _) in hists.items():
        sites.setdefault(site, []).append({"layer": layer, "counts": [int(c) for c in counts]})
    return {"edges": [float(e) for e in edges], "sites": sites}
