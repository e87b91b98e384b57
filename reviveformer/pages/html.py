"""The HTML of the report pages: the page frame and its style, tables, cards, and embedded figures.

A page is one self-contained HTML file: figures are embedded as base64 PNG, nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from reviveformer.compare import MISSING
from reviveformer.figures import DPI

log = logging.getLogger("reviveformer")


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: Sequence[bool] | None = None,
    table_id: str = "",
) -> str:
    numeric = numeric or [False] * len(headers)
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(
        f'<th class="{"num" if n else ""}">{escape(h)}</th>' for h, n in zip(headers, numeric, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if n else ""}">{escape(c)}</td>' for c, n in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += flatten(value, name + ".")
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


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><main>{body}</main></body></html>\n"
    )


def fmt(value: float | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure(fig_id: str, title: str, build: Callable[[], Figure], caption: str = "") -> str:
    """An embedded figure, or a note saying why it is missing (a figure must never stop a report)."""
    try:
        data = png(build())
    except Exception as e:
        log.warning("report: figure %r not drawn: %s: %s", title, type(e).__name__, e)
        return f'<p class="missing" id="{fig_id}">{escape(title)}: not drawn ({escape(type(e).__name__)}: {escape(e)})</p>'
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure id="{fig_id}"><img alt="{escape(title)}" src="data:image/png;base64,{data}">{cap}</figure>'
    )
