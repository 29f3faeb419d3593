"""The course's figures: one function each, one look.

Every function takes plain numbers (lists, dicts, tensors), draws one figure in the
course style and returns the ``matplotlib.figure.Figure``. In a lesson, assign the result
(``fig = plots.lora_savings(...)``): the inline backend shows the figure once; a bare
expression would show it twice. Functions never call ``plt.show()``, so tests can inspect
the axes and the lessons' stored outputs stay one image per figure.

The style: a white background, a light grid behind the data, no top/right spines, one
colour per method that stays the same across lessons (``COLORS``), numbers written on bars
so a reader does not have to estimate them from an axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    "nf4": "#55A868",
    "fp4": "#DD8452",
    "int4": "#C44E52",
}
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
    """Apply the course's rcParams inside a ``with`` block (and nowhere else)."""
    with plt.rc_context(_RC):
        yield


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


# --- lesson 01: the low-rank idea -------------------------------------------------------


def lora_savings(layers: Mapping[str, tuple[int, int]], ranks: Sequence[int]) -> Figure:
    """Trainable share of a layer against LoRA rank, one line per layer shape.

    For a frozen weight W of shape (d, k), LoRA trains B (d x r) and A (r x k): r (d + k)
    parameters instead of d k. The share r (d + k) / (d k) grows linearly in r and shrinks
    as the layer grows, which is why LoRA pays off most on large models.

    Args:
        layers: label -> (d, k), e.g. ``{"4096 x 4096": (4096, 4096)}``.
        ranks: the ranks on the x axis (log scale), e.g. ``[1, 2, 4, ..., 256]``.
    """
    _check_nonempty("layers", layers)
    _check_nonempty("ranks", ranks)
    with course_style():
        fig, ax = _new()
        for label, (d, k) in layers.items():
            share = [100 * r * (d + k) / (d * k) for r in ranks]
            ax.plot(ranks, share, marker="o", ms=4, label=f"{label}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(ranks), [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel("trainable share of the layer (%)")
        ax.set_title("LoRA trains a small, rank-proportional share")
        ax.legend(title="layer d x k")
        return _finish(fig)


def model_savings(rows: Mapping[str, tuple[int, int]]) -> Figure:
    """Trainable parameters of whole models: full fine-tuning versus LoRA, log scale.

    Args:
        rows: model label -> (full trainable count, LoRA trainable count).
    """
    _check_nonempty("rows", rows)
    with course_style():
        fig, ax = _new()
        labels = list(rows)
        full = [rows[m][0] for m in labels]
        lora = [rows[m][1] for m in labels]
        y = range(len(labels))
        b1 = ax.barh([i + 0.2 for i in y], full, height=0.4, color=COLORS["full"], label="full")
        b2 = ax.barh([i - 0.2 for i in y], lora, height=0.4, color=COLORS["lora"], label="LoRA")
        ax.set_xscale("log")
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        _label_bars(ax, b1, "{:,.0f}")
        _label_bars(ax, b2, "{:,.0f}")
        ax.set_xlim(right=max(full) * 40)
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_title("Trainable parameters: full fine-tuning vs LoRA")
        ax.legend(loc="lower right")
        return _finish(fig)


def singular_values(
    values: Sequence[float],
    title: str = "Singular values of a weight update",
    mark: Sequence[int] = (1, 4, 16),
) -> Figure:
    """The spectrum of an update matrix and the share of its energy in the top r values.

    A matrix of rank r has r non-zero singular values. If a fine-tuning update
    Delta W = W_after - W_before has a few large singular values and a long tail of small
    ones, a rank-r product B A captures most of it: the energy captured by the best rank-r
    approximation is sum_{i<=r} s_i^2 / sum_i s_i^2 (Eckart-Young).

    Args:
        values: singular values, any order (they are sorted, largest first).
        mark: ranks at which to annotate the captured energy.
    """
    import numpy as np

    s = np.sort(np.asarray(values, dtype=float))[::-1]
    _check_nonempty("values", s)
    energy = np.cumsum(s**2) / np.sum(s**2)
    with course_style():
        fig, (a1, a2) = _new(1, 2, figsize=(9, 3.6))
        idx = np.arange(1, len(s) + 1)
        a1.bar(idx, s / s[0], color=COLORS["lora"], width=0.9)
        a1.set_xlabel("index i")
        a1.set_ylabel("s_i / s_1")
        a1.set_title("spectrum")
        a2.plot(idx, 100 * energy, color=COLORS["full"], marker=".", ms=3)
        for r in mark:
            if r <= len(s):
                a2.annotate(
                    f"r={r}: {100 * energy[r - 1]:.0f} %",
                    (r, 100 * energy[r - 1]),
                    textcoords="offset points",
                    xytext=(8, -12),
                    fontsize=8,
                )
                a2.plot([r], [100 * energy[r - 1]], "o", color=COLORS["lora"])
        a2.set_xscale("log")
        a2.set_ylim(0, 102)
        a2.set_xlabel("rank r")
        a2.set_ylabel("energy captured (%)")
        a2.set_title("best rank-r approximation")
        fig.suptitle(title, fontweight="bold")
        return _finish(fig)


# --- training runs (lessons 03, 05) -------------------------------------------------------


def training_curves(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "loss",
    x: str = "step",
    ylabel: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """One line per run of ``metric`` against ``x``.

    Args:
        runs: label -> history, where a history maps column names to equal-length lists
            (e.g. ``{"step": [...], "loss": [...]}``), as ``labkit.train`` returns it.
        metric: the column to plot (e.g. ``"loss"`` or ``"eval_acc"``).
        colors: optional label -> colour; by default the course cycle.
    """
    _check_nonempty("runs", runs)
    with course_style():
        fig, ax = _new()
        for label, hist in runs.items():
            if metric not in hist or x not in hist:
                have = ", ".join(sorted(hist))
                raise KeyError(f"run {label!r} has no column {metric!r} or {x!r}; it has: {have}")
            xs, ys = hist[x], hist[metric]
            pts = [(a, b) for a, b in zip(xs, ys, strict=True) if b is not None]
            kw = {"color": colors[label]} if colors and label in colors else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **kw)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel or metric)
        if metric == "loss":
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"{ylabel or metric} during training")
        return _finish(fig)


def bars(
    values: Mapping[str, float],
    xlabel: str,
    title: str,
    fmt: str = "{:,.0f}",
    colors: Sequence[str] | Mapping[str, str] | None = None,
    log: bool = False,
) -> Figure:
    """Horizontal bars with their values written on them: the course's comparison chart.

    Args:
        values: label -> value, drawn top to bottom in the given order.
        fmt: format of the value labels, e.g. ``"{:.0f} %"`` or ``"{:.1f} MB"``.
        colors: one colour per bar (a list, or label -> colour).
    """
    _check_nonempty("values", values)
    labels = list(values)
    if isinstance(colors, Mapping):
        colors = [colors.get(lb, _CYCLE[0]) for lb in labels]
    with course_style():
        fig, ax = _new(figsize=(7, 0.45 * len(labels) + 1.4))
        b = ax.barh(labels, [values[k] for k in labels], color=colors or _CYCLE[0])
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        _label_bars(ax, b, fmt)
        hi = max(values.values())
        ax.set_xlim(right=hi * (8 if log else 1.18))
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        return _finish(fig)
