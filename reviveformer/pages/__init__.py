"""The report pages: `RUN/report.html` for one run (`run`), `compare.html` for several side by side (`compare`),
both built from what runs have written, in the frame, style and tables of `html`.

A page is one self-contained HTML file: figures are embedded as base64 PNG, nothing is fetched from the network.
Training imports this package only at a run's end, to write its page; the figures themselves are
`reviveformer.figures`'. Callers import from `reviveformer.pages`; the names below are its interface.
"""

from __future__ import annotations

from reviveformer.pages.compare import COMPARE_FILE, comparison_html, write_comparison_report
from reviveformer.pages.run import REPORT_FILE, run_report_html, write_run_report

__all__ = [
    "COMPARE_FILE",
    "REPORT_FILE",
    "comparison_html",
    "run_report_html",
    "write_comparison_report",
    "write_run_report",
]
