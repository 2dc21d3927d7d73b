"""Matplotlib (Agg, no pyplot state) figures rendered to inline SVG for the report.

Every plot goes through :func:`render`, which refuses a figure whose axes lack a title or axis
labels and returns the SVG with the alt text and the provenance line the page shows under it.

Each plot is drawn twice: a ``wide`` layout (panels side by side, for desktop) and a ``narrow``
one (the same panels stacked in one column, for phones); the page picks one by screen width.
Plot functions ask :func:`new_figure` for an ``nrows × ncols`` grid and index it ``axes[r][c]``
either way; under the narrow layout that grid is laid out as one column.
"""

from __future__ import annotations

import base64
import io
import contextlib
import contextvars
import math
import re
from dataclasses import dataclass

MODULE_MARKERS = {"q": "o", "k": "s", "v": "^", "o": "v", "gate": "D", "up": "P", "down": "X",
                  "embed": "*", "norm": ".", "lm_head": "h", "other": "d"}


#: Width in inches of a narrow-layout (phone) figure.
NARROW_WIDTH_IN = 4.6
_LAYOUT: contextvars.ContextVar[str] = contextvars.ContextVar("deltalens_plot_layout", default="wide")


@contextlib.contextmanager
def layout(name: str):
    """Draw figures made inside this block in the ``wide`` or ``narrow`` layout."""
    token = _LAYOUT.set(name)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def is_narrow() -> bool:
    return _LAYOUT.get() == "narrow"


@dataclass(frozen=True)
class Plot:
    """A rendered figure: its title, alt text, provenance line, SVG bytes and CSS pixel width."""

    title: str
    alt: str
    provenance: str
    svg: bytes
    width_px: int
    text_outside: tuple[str, ...] = ()

    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg).decode("ascii")


def draw_both(make, *args):
    """``make(*args)`` under the wide and the narrow layout: (wide Plot, narrow Plot)."""
    with layout("wide"):
        wide = make(*args)
    with layout("narrow"):
        narrow = make(*args)
    return wide, narrow


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 8.0, height: float = 3.6, **kw):
    """A fresh Figure with an Agg canvas (no pyplot, no global state) and an ``axes[r][c]`` grid.

    Under the narrow layout the nrows × ncols panels are stacked in one column of
    :data:`NARROW_WIDTH_IN` inches, each panel keeping about its wide height.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if is_narrow():
        panel_h = max(2.6, min(3.4, height / nrows))
        fig = Figure(figsize=(NARROW_WIDTH_IN, panel_h * nrows * ncols + 0.5), layout="constrained")
        flat = fig.subplots(nrows * ncols, 1, squeeze=False, **kw)
        axes = [[flat[r * ncols + c][0] for c in range(ncols)] for r in range(nrows)]
    else:
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    FigureCanvasAgg(fig)
    return fig, axes


def figure_legend(fig, handles, labels, *, title: str | None = None) -> None:
    """A legend for the whole figure: at the right when wide, below the panels when narrow."""
    if is_narrow():
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, max(1, len(labels))), fontsize=7, title=title)
    else:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, title=title)


def integer_ticks(*axes) -> None:
    """Only whole numbers on the x axis (layers, ranks)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def panels(count: int, *, per_row: int = 3, width: float = 4.2, height: float = 3.4):
    """A figure of ``count`` panels, at most ``per_row`` a row: (fig, the ``count`` axes in reading
    order); the grid's unused cells are hidden."""
    ncols = min(count, per_row)
    nrows = math.ceil(count / ncols)
    fig, axes = new_figure(nrows, ncols, width=min(width * ncols + 1, 13), height=height * nrows)
    cells = [axes[i // ncols][i % ncols] for i in range(nrows * ncols)]
    for ax in cells[count:]:
        ax.set_visible(False)
    return fig, cells[:count]


def finish_log_panel(ax, *, title: str, xlabel: str, ylabel: str, legend_size: int = 8) -> None:
    """Log y, integer x ticks, labels, a light grid and the legend: one spectrum panel's dressing."""
    ax.set_yscale("log")
    integer_ticks(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # a panel with nothing positive to draw has no legend to show
        ax.legend(fontsize=legend_size)


def render(fig, *, title: str, alt: str, provenance: str) -> Plot:
    """Check every visible axes has a title and both axis labels, then save the figure as SVG.

    The plot records which texts (titles, labels, legends, tick labels) extend past the figure's
    edge (``text_outside``; the browser tests require none) and its SVG is compacted
    (:func:`compact_svg`).
    """
    import matplotlib

    fig.suptitle(title, fontsize=11 if is_narrow() else 12, fontweight="bold", wrap=True)
    for ax in fig.axes:
        if not ax.get_visible() or not ax.has_data():
            continue
        if not (ax.get_title() and ax.get_xlabel() and ax.get_ylabel()):
            raise ValueError(f"figure '{title}': every panel needs a title and axis labels")
        ax.title.set_wrap(True)  # a long panel title wraps at the figure's edge instead of running past it
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "deltalens", "font.family": "sans-serif",
                                "font.sans-serif": ["DejaVu Sans"]}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "deltalens"})
        outside = text_outside(fig)
    width_px = round(fig.get_figwidth() * 96)
    return Plot(title=title, alt=alt, provenance=provenance, svg=compact_svg(buf.getvalue()), width_px=width_px,
                text_outside=tuple(outside))


def text_outside(fig) -> list[str]:
    """Where drawn content of ``fig`` (texts, legends, tick labels actually shown) extends past
    the figure's edge by more than one pixel: one entry per side, empty when everything fits."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches, drawn artists only
    box = fig.bbox_inches
    px = fig.dpi
    out = []
    for side, over in (("left", box.x0 - tight.x0), ("bottom", box.y0 - tight.y0), ("right", tight.x1 - box.x1),
                       ("top", tight.y1 - box.y1)):
        if over * px > 1:
            out.append(f"{side} by {over * px:.0f} px")
    return out


_NUMBER = re.compile(rb"-?\d+\.\d{2,}")
_GEOMETRY = re.compile(rb'\b(d|x|y|x1|x2|y1|y2|transform|points)="([^"]*)"')


def compact_svg(svg: bytes) -> bytes:
    """Matplotlib's SVG with coordinates rounded to 0.1 px (invisible at any zoom a page uses)
    and the whitespace between elements and inside paths removed: about a third smaller."""
    def rnd(m):
        text = b"%.1f" % float(m.group(0))
        return text[:-2] if text.endswith(b".0") else text

    def attr(m):
        return m.group(1) + b'="' + re.sub(rb"\s+", b" ", _NUMBER.sub(rnd, m.group(2))).strip() + b'"'

    svg = _GEOMETRY.sub(attr, svg)
    return re.sub(rb">\s+<", b"><", svg)


def finite_xy(xs, ys):
    """Pairs with a finite y (NaN/None points are dropped, not drawn as zero)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def describe_range(values) -> str:
    """'from a to b' over the finite values, for alt text."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "no finite values"
    return f"from {min(finite):.3g} to {max(finite):.3g}"
