"""The comparison's tables as cells, Markdown and console text: one row per run, one per arm, the differences."""

from __future__ import annotations

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


def _markdown(headers: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

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
