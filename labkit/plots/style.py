"""The course's figure style: colours, rcParams, the ``course_style`` context and the small
helpers every figure uses (a new figure, its finish, bar labels, input checks).

Every plot function of :mod:`labkit.plots` takes plain numbers (lists, dicts, tensors),
draws one figure in the course style and returns the ``matplotlib.figure.Figure``. In a
lesson, assign the result (``fig = plots.lora_savings(...)``): the inline backend shows the
figure once; a bare expression would show it twice. Functions never call ``plt.show()``, so
tests can inspect the axes and the lessons' stored outputs stay one image per figure.

The style: a white background, a light grid behind the data, no top/right spines, one
colour per method that stays the same across lessons (``COLORS``), numbers written on bars
so a reader does not have to estimate them from an axis.

Imports: matplotlib only (no labkit module, no torch).
"""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

#: One colour per idea, used by every figure of the course.
COLORS = {
    "full": "#4C72B0",  # full fine-tuning
    "lora": "#DD8452",
    "qlora": "#55A868",
    "base": "#8C8C8C",  # frozen / pretrained weights
    "weights": "#4C72B0",
    "gradients": "#C44E52",
    "optimizer": "#8172B3",
    "activations": "#CCB974",
    "quant_state": "#64B5CD",
    # 4-bit formats (lessons 04, 05): a palette of their own, so that no format looks like a
    # method (NF4 is not "QLoRA green", FP4 not "LoRA orange").
    "nf4": "#DC267F",
    "fp4": "#FFB000",
    "int4": "#1F7A8C",
}
#: Storage widths in bits, darkest = most bits: a neutral sequential palette for figures that
#: compare bit widths (fp32, bf16, int8, 4-bit), kept apart from the method colours.
BIT_WIDTHS = {32: "#2F3B47", 16: "#5E6F80", 8: "#93A2B1", 4: "#C5CFD8"}
_CYCLE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

_RC = {
    "figure.figsize": (7.0, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=_CYCLE),
}


@contextmanager
def course_style():
    """Apply the course's rcParams inside a ``with`` block (and nowhere else).

    One setting must survive the block: Jupyter's inline backend switches matplotlib to
    interactive mode when the first figure is drawn, which here happens inside the block;
    ``rc_context`` would then restore "not interactive" on exit and every later figure of
    the lesson would silently not show. So the interactive flag is carried out of the block.
    """
    try:
        with plt.rc_context(_RC):
            try:
                yield
            finally:
                interactive = matplotlib.is_interactive()
    finally:
        matplotlib.interactive(interactive)


def _new(nrows: int = 1, ncols: int = 1, **kw):
    fig, ax = plt.subplots(nrows, ncols, **kw)
    return fig, ax


def _finish(fig: Figure) -> Figure:
    fig.tight_layout()
    return fig


def _label_bars(ax, bars, fmt: str = "{:,.0f}") -> None:
    """Write each bar's value just past its end (works for vertical and horizontal bars)."""
    horizontal = bars.orientation == "horizontal"
    labels = [fmt.format(b.get_width() if horizontal else b.get_height()) for b in bars]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)


def _check_nonempty(name: str, values) -> None:
    if len(values) == 0:
        raise ValueError(f"{name} is empty: pass at least one value to plot")


def _method_color(label: str, default: str) -> str:
    """The course colour for a label that names a method ("full ...", "LoRA ..."), else default."""
    low = label.lower()
    for key in ("qlora", "lora", "full"):
        if low.startswith(key):
            return COLORS[key]
    return default

