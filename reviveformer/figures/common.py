"""What every figure shares: the palettes and colour maps, layer and ratio axes, and `save_figure`.

Everything is drawn on a bare `matplotlib.figure.Figure` (the Agg canvas is chosen by `savefig` from the
file suffix), never through pyplot, so there is no global figure registry and no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from reviveformer.architectures import site_names, site_order
from reviveformer.run_files import read_metrics, series

# a registered site's colour is its registry position in this palette (mlp_pre blue, mlp_post orange, attn_out green)
SITE_PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
FREQ_CMAP = "viridis"
LAYER_CMAP = "plasma"
DPI = 120
# Above this many layers, per-layer text labels and legends would overlap: switch to colour bars.
MAX_LABELLED_LAYERS = 16


# ---------------------------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | Path, svg: bool = False) -> Path:
    """Write `fig` as a PNG at `path` (parents created), with `svg` also as an SVG beside it (same stem),
    release its artists, and return the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    if svg:
        # Text kept as text (not glyph paths), so labels can be searched and edited; no date, so the same
        # figure writes the same file.
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    fig.clear()  # no pyplot registry to close from; clearing frees the artists at once
    return path


def site_color(site: str, i: int) -> Any:
    names = site_names()
    return SITE_PALETTE[names.index(site) % len(SITE_PALETTE)] if site in names else f"C{(i + 3) % 10}"


def layer_colors(layers: Sequence[int]) -> dict[int, Any]:
    """Colour per layer along a sequential colormap, shallow (dark) to deep (bright)."""
    cmap = matplotlib.colormaps[LAYER_CMAP]
    hi = max(max(layers), 1) if layers else 1
    # Stop at 0.85: plasma's last stretch is a pale yellow that vanishes on white.
    return {layer: cmap(0.85 * layer / hi) for layer in layers}


def layer_colorbar(fig: Figure, ax: Axes, layers: Sequence[int]) -> None:
    """A colour bar keyed to layer depth, used instead of a legend when there are many layers."""
    hi = max(max(layers), 1)
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list(
        "layers", [matplotlib.colormaps[LAYER_CMAP](x) for x in np.linspace(0, 0.85, 64)]
    )
    sm = matplotlib.cm.ScalarMappable(norm=Normalize(0, hi), cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.05)
    cb.set_label("layer")
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()


def row_formatter(labels: Sequence[int]) -> FuncFormatter:
    """Tick formatter mapping a row index to its layer number (bound now: formatters run at draw time)."""

    def fmt(v: float, _pos: int | None) -> str:
        return str(labels[int(v)]) if 0 <= v < len(labels) and v == int(v) else ""

    return FuncFormatter(fmt)


def layer_axis(ax: Axes, axis: str = "x") -> None:
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True, nbins=12))


def ratio_axis(ax: Axes) -> None:
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, alpha=0.3)


def liveness_sites(liveness: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Non-empty sites of a liveness.json dict, in design order, each layer list sorted by layer."""
    sites = liveness.get("sites") or {}
    out = {s: sorted(sites[s], key=lambda d: int(d["layer"])) for s in site_order(sites) if sites[s]}
    if not out:
        raise ValueError("liveness has no sites with layers to plot (expected liveness['sites'][site] lists)")
    return out


def arrays(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric as arrays for a line: `run_files.series` with NaN kept (a gap)."""
    found = series(rows, key, finite=False)
    steps = np.array([s for s, _ in found], dtype=np.int64)
    return steps, np.array([v for _, v in found], dtype=np.float64)


def rows_of(metrics_path_or_rows: str | Path | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """The metrics rows given, or read from a metrics.jsonl path."""
    if isinstance(metrics_path_or_rows, (str, Path)):
        return read_metrics(metrics_path_or_rows)
    return metrics_path_or_rows
