"""The general charts that several lessons share: training curves (lessons 01, 03, 05, 09),
horizontal bars with their values written on (lesson 04) and stacked bars that show where
two totals differ (lesson 07).

Imports: matplotlib and :mod:`labkit.plots.style` (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from labkit.plots.style import _CYCLE, _check_nonempty, _finish, _label_bars, _new, course_style

# --- training runs (lessons 03, 05) -------------------------------------------------------


def training_curves(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "loss",
    x: str = "step",
    ylabel: str | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """One line per run of ``metric`` against ``x``.

    Args:
        runs: label -> history, where a history maps column names to equal-length lists
            (e.g. ``{"step": [...], "loss": [...]}``), as ``labkit.train`` returns it.
        metric: the column to plot (e.g. ``"loss"`` or ``"eval_acc"``).
        colors: optional label -> colour; by default the course cycle.
        title: the figure title; by default "<Ylabel or metric> during training".
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
        name = ylabel or metric
        ax.set_title(title or f"{name[:1].upper()}{name[1:]} during training")
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


def stacked_bars(
    rows: Mapping[str, Mapping[str, float]],
    xlabel: str,
    title: str,
    fmt: str = "{:,.2f}",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Horizontal stacked bars, one per row, each split into named parts; totals written on.

    Shows *where* two totals differ: the same parts, in the same colours and order, in every
    bar. A part missing from a row counts as 0 there.

    Args:
        rows: bar label -> part -> value, bars drawn top to bottom, parts left to right in
            the order they first appear.
        fmt: format of the total written past each bar, e.g. ``"{:.2f} GB"``.
        colors: part -> colour; parts not named take the course's colour cycle.

    Raises:
        ValueError: ``rows`` or one of its rows is empty, or a value is negative.
    """
    _check_nonempty("rows", rows)
    parts: list[str] = []
    for label, row in rows.items():
        _check_nonempty(f"rows[{label!r}]", row)
        for part, v in row.items():
            if v < 0:
                raise ValueError(f"rows[{label!r}][{part!r}] is {v}: stacked parts must be >= 0")
            if part not in parts:
                parts.append(part)
    labels = list(rows)
    colors = colors or {}
    with course_style():
        fig, ax = _new(figsize=(7, 0.55 * len(labels) + 1.9))
        left = [0.0] * len(labels)
        for i, part in enumerate(parts):
            vals = [float(rows[lb].get(part, 0.0)) for lb in labels]
            ax.barh(labels, vals, left=left, height=0.6, label=part,
                    color=colors.get(part, _CYCLE[i % len(_CYCLE)]))
            left = [a + v for a, v in zip(left, vals, strict=True)]
        for y, total in enumerate(left):
            ax.annotate(fmt.format(total), (total, y), textcoords="offset points",
                        xytext=(3, 0), va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.18)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        handles, names = ax.get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=len(parts))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        return fig
