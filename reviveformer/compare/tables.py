"""The comparison's tables as cells, Markdown and console text: one row per run, one per arm, the differences."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "-"


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _int(v: float) -> str:
    return f"{int(v):,}"


# key -> (header, formatter, numeric); dead_ratio/<site> columns are matched by prefix.
_COLUMNS: dict[str, tuple[str, Any, bool]] = {
    "run": ("run", str, False),
    "status": ("status", str, False),
    # Loud on purpose: an incomplete run's numbers are not its planned end's.
    "complete": ("complete", lambda v: "yes" if v else "NO", False),
    "arm": ("arm", str, False),
    "activation": ("activation", str, False),
    "final_val_loss": ("final val loss", lambda v: f"{v:.4f}", True),
    "best_val_loss": ("best val loss", lambda v: f"{v:.4f}", True),
    "tasks": ("tasks", _int, True),
    "task_train_loss_last_half": ("task loss, last half", lambda v: f"{v:.4f}", True),
    "task_val_loss_last_half": ("task held-out loss, last half", lambda v: f"{v:.4f}", True),
    "alive_fraction": ("alive MLP", _pct, True),
    "effective_params": ("effective params", _int, True),
    "effective_param_fraction": ("effective %", _pct, True),
    "revived_units": ("units revived", _int, True),
    "pruned_weights": ("weights pruned", _int, True),
    "tokens_per_s": ("tokens/s", lambda v: f"{v:,.0f}", True),
}


def _column(key: str) -> tuple[str, Any, bool]:
    if key.startswith("dead_ratio/"):
        return f"dead {key.split('/', 1)[1]}", _pct, True
    return _COLUMNS.get(key, (key, str, False))


def table_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, formatted cells, numeric flags) of the rows; None becomes "-"."""
    keys = list(rows[0]) if rows else list(_COLUMNS)
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    cols = [_column(k) for k in keys]
    cells = [
        [MISSING if row.get(k) is None else fmt(row[k]) for k, (_, fmt, _) in zip(keys, cols, strict=True)]
        for row in rows
    ]
    return [c[0] for c in cols], cells, [c[2] for c in cols]


def _md_escape(text: str) -> str:
    """A cell shown as written: a run's name is the user's text, so `<` and `>` (raw HTML in Markdown), `|`
    (a cell's end) and an `&` that starts an entity are backslash-escaped; a plain `&` (W&B) reads as it is."""
    return re.sub(r"&(?=#?\w+;)", r"\\&", re.sub(r"([<>|])", r"\\\1", text))


def _markdown(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(_md_escape(v) for v in values) + " |"

    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(c) for c in cells)])


def _text(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a GitHub-flavoured Markdown table (numbers right-aligned)."""
    return _markdown(*table_cells(rows))


def render_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as plain aligned text for the console (numbers right-aligned)."""
    return _text(*table_cells(rows))


def _stat(key: str, stat: Mapping[str, Any] | None) -> str:
    """`mean +- sd` in the column's format (sd of a count with one decimal); the mean alone for one value."""
    if stat is None:
        return MISSING
    _, fmt, _ = _column(key)
    spread = (lambda v: f"{v:,.1f}") if fmt is _int else fmt
    return fmt(stat["mean"]) + ("" if stat["sd"] is None else f" ± {spread(stat['sd'])}")


def group_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of `group_row` rows: arm, n, activation, then mean +- sd columns."""
    keys = [k for k in rows[0] if k not in ("arm", "n", "seeds", "activation")] if rows else []
    headers = ["arm", "n", "activation", *(_column(k)[0] for k in keys)]
    cells = [
        [str(r["arm"]), str(r["n"]), str(r.get("activation") or MISSING), *(_stat(k, r.get(k)) for k in keys)]
        for r in rows
    ]
    return headers, cells, [False, True, False, *([True] * len(keys))]


def difference_cells(diffs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of `differences` rows."""
    if not diffs:
        return [], [], []
    pct = f"{diffs[0]['confidence']:.0%}"
    headers = [
        "arm",
        "n",
        f"{diffs[0]['reference']} n",
        "difference",
        f"{pct} interval (Welch)",
        "df",
        "paired n",
        "paired difference",
        f"{pct} interval (paired)",
    ]
    cells = []
    for d in diffs:
        interval = MISSING if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        paired = (
            MISSING if d.get("paired_low") is None else f"[{d['paired_low']:+.4f}, {d['paired_high']:+.4f}]"
        )
        cells.append(
            [
                str(d["arm"]),
                str(d["n"]),
                str(d["n_reference"]),
                MISSING if d["diff"] is None else f"{d['diff']:+.4f}",
                interval,
                MISSING if d["df"] is None else f"{d['df']:.1f}",
                str(d.get("paired_n", 0)),
                MISSING if d.get("paired_diff") is None else f"{d['paired_diff']:+.4f}",
                paired,
            ]
        )
    return headers, cells, [False, True, True, True, True, True, True, True, True]


# ---------------------------------------------------------------------------------------------- plasticity

_TASK_METRIC_NAMES = {"train": "training loss", "val": "held-out loss"}


def _signed(d: Mapping[str, Any] | None) -> tuple[str, str]:
    """(difference, interval) cells of a `_paired` result."""
    if d is None or d["diff"] is None:
        return MISSING, MISSING
    interval = MISSING if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
    return f"{d['diff']:+.4f}", interval


def plasticity_arm_cells(p: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of the arms of a `plasticity` result: the last-half means, mean +- sd."""
    headers = ["arm", "method", "n", "tasks", "training loss (mean ± sd)", "held-out loss (mean ± sd)"]
    cells = [
        [
            str(a["arm"]),
            str(a["method"] or MISSING),
            str(a["n"]),
            ", ".join(map(str, a["tasks"])) or MISSING,
            *(_stat("task_train_loss_last_half", a[m] if a[m]["n"] else None) for m in _TASK_METRIC_NAMES),
        ]
        for a in p["arms"]
    ]
    return headers, cells, [False, False, True, True, True, True]


def plasticity_difference_cells(
    p: Mapping[str, Any], metric: str
) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) for one metric (`train` or `val`) of a `plasticity` result: per arm the
    paired differences to the trains-on and the fresh-start arm, and the fraction of the gap recovered."""
    pct = f"{p['confidence']:.0%}"
    headers = [
        "arm",
        "minus trains on",
        f"{pct} interval",
        "minus fresh start",
        f"{pct} interval",
        "recovered fraction of the gap",
        f"{pct} interval (Fieller)",
        "paired n",
    ]
    cells = []
    for a in p["arms"]:
        rec = (a["recovered"] or {}).get(metric)
        if rec is None or rec["fraction"] is None:
            fraction, interval = MISSING, MISSING
        else:
            fraction = f"{rec['fraction']:.1%}"
            interval = (
                f"[{rec['low']:.1%}, {rec['high']:.1%}]"
                if rec["bounded"]
                else ("unbounded" if rec["n"] >= 2 else MISSING)
            )
        to_none = (a["to_none"] or {}).get(metric)
        to_fresh = (a["to_fresh_start"] or {}).get(metric)
        n = max((d["n"] for d in (to_none, to_fresh) if d is not None), default=None)
        cells.append(
            [
                str(a["arm"]),
                *_signed(to_none),
                *_signed(to_fresh),
                fraction,
                interval,
                MISSING if n is None else str(n),
            ]
        )
    return headers, cells, [False, *([True] * 7)]


def plasticity_gap_cells(p: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, cells, numeric flags) of the plasticity gaps (trains on - fresh start) of a `plasticity` result."""
    pct = f"{p['confidence']:.0%}"
    headers = ["trains on", "fresh start", "paired n"]
    for name in _TASK_METRIC_NAMES.values():
        headers += [f"gap, {name}", f"{pct} interval"]
    cells = [
        [
            str(g["none"]),
            str(g["fresh_start"]),
            str(g["train"]["n"]),
            *_signed(g["train"]),
            *_signed(g["val"]),
        ]
        for g in p["gaps"]
    ]
    return headers, cells, [False, False, True, True, True, True, True]
