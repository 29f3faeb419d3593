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
        # beside the axes: inside, it would cover the lines of the smallest layers
        ax.legend(title="layer d x k", loc="upper left", bbox_to_anchor=(1.02, 1))
        return _finish(fig)


def model_savings(rows: Mapping[str, tuple[int, int]]) -> Figure:
    """Trainable parameters of whole models, full fine-tuning versus LoRA: dots on a log axis.

    The counts span many orders of magnitude, so the axis is logarithmic; dots (not bars,
    whose lengths would mean nothing on a log axis) mark the two counts of each model, a
    grey line joins them, and the LoRA share is written next to the line as a percentage
    and as "1/N" (N = full / LoRA).

    Args:
        rows: model label -> (full trainable count, LoRA trainable count).
    """
    _check_nonempty("rows", rows)
    with course_style():
        fig, ax = _new(figsize=(7.0, 1.2 + 1.0 * len(rows)))
        labels = list(rows)
        for i, m in enumerate(labels):
            full, lora = rows[m]
            ax.plot([lora, full], [i, i], color=COLORS["base"], lw=1, zorder=1)
            ax.scatter([full], [i], s=45, color=COLORS["full"], zorder=2,
                       label="full fine-tuning" if i == 0 else None)
            ax.scatter([lora], [i], s=45, color=COLORS["lora"], zorder=2,
                       label="LoRA" if i == 0 else None)
            ax.annotate(f"{full:,}", (full, i), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
            ax.annotate(f"{lora:,}", (lora, i), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
            ax.annotate(f"{100 * lora / full:.3f} % = 1/{full / lora:,.0f}",
                        ((lora * full) ** 0.5, i), textcoords="offset points", xytext=(0, -13),
                        ha="center", fontsize=8, color=COLORS["lora"])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.4, -0.6)  # first row on top, room for the labels
        ax.set_xscale("log")
        lo = min(r[1] for r in rows.values())
        hi = max(r[0] for r in rows.values())
        ax.set_xlim(lo / 4, hi * 4)
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_title("Trainable parameters: full fine-tuning vs LoRA")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=2)
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
        a1.bar(idx, s / s[0], color=COLORS["base"], width=0.9)
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
                a2.plot([r], [100 * energy[r - 1]], "o", color=COLORS["full"])
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


# --- lesson 04: quantization ---------------------------------------------------------------


def _format_color(name: str) -> str:
    """A 4-bit format's course colour; "nf4+dq" takes nf4's; unquantized baselines are grey."""
    if name in ("fp32", "bf16", "fp16"):
        return COLORS["base"]
    return COLORS.get(name, COLORS.get(name.split("+")[0], _CYCLE[0]))


def quant_levels(
    values,
    levels: Mapping[str, Sequence[float]],
    bins: int = 101,
    title: str = "Where each 4-bit format puts its 16 levels",
) -> Figure:
    """Histogram of block-scaled weights, with each format's levels as vertical lines.

    Blockwise absmax quantization divides every weight by the largest magnitude in its block,
    so the values to be rounded lie in [-1, 1]; a format's 16 levels lie there too. A good
    format puts its levels where the values are dense (a level that few values are near is a
    wasted code). One panel per format, the same histogram in each.

    Args:
        values: the scaled values x / absmax (any shape; flattened), e.g. a model's weights.
        levels: format name -> its codebook (16 levels in [-1, 1]); repeated levels (the two
            zeros of FP4 and Int4) are drawn once.
        bins: histogram bins over [-1, 1].
    """
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(-1)
    _check_nonempty("values", v)
    _check_nonempty("levels", levels)
    with course_style():
        n = len(levels)
        fig, axes = _new(n, 1, figsize=(7, 1.7 * n + 0.9), sharex=True, squeeze=False)
        for ax, (name, code) in zip(axes[:, 0], levels.items(), strict=True):
            distinct = sorted({float(c) for c in np.asarray(code, dtype=float).reshape(-1)})
            ax.hist(v, bins=bins, range=(-1, 1), color=COLORS["base"], alpha=0.55)
            for level in distinct:
                ax.axvline(level, color=_format_color(name), lw=1.3)
            ax.set_ylabel("count")
            ax.set_title(f"{name.upper()}: {len(distinct)} distinct levels", loc="left",
                         fontsize=10)
        axes[-1, 0].set_xlabel("weight / absmax of its block")
        fig.suptitle(title, fontweight="bold")
        return _finish(fig)


def quant_errors(
    errors: Mapping[str, Mapping[str, float]],
    spread: Mapping[str, Mapping[str, float]] | None = None,
    ylabel: str = "relative RMS error (%)",
    title: str = "Round-trip error of each 4-bit format",
    fmt: str = "{:.1f}",
) -> Figure:
    """Grouped bars: one group per data set, one bar per format, its value written on it.

    Formats keep their course colour; a "+dq" variant (double quantization) is hatched.

    Args:
        errors: data-set label -> {format name -> value}; every group must name the same
            formats, in the same order (they are the bars of each group).
        spread: optional, data-set label -> {format -> half-width of an error bar} (e.g. half
            the spread over seeds); groups left out get no error bars.
        fmt: format of the value labels.
    """
    import numpy as np

    _check_nonempty("errors", errors)
    groups = list(errors)
    formats = list(errors[groups[0]])
    _check_nonempty(f"errors[{groups[0]!r}]", formats)
    for g in groups:
        if list(errors[g]) != formats:
            raise ValueError(
                f"errors[{g!r}] has formats {list(errors[g])} but errors[{groups[0]!r}] has "
                f"{formats}: give every group the same formats, in the same order"
            )
    for g in spread or {}:
        if g not in errors or set(spread[g]) != set(formats):
            raise ValueError(
                f"spread[{g!r}] must name a group of errors and the same formats {formats}"
            )
    with course_style():
        fig, ax = _new(figsize=(7, 3.8))
        x = np.arange(len(groups))
        width = 0.8 / len(formats)
        for j, f in enumerate(formats):
            xs = x + (j - (len(formats) - 1) / 2) * width
            heights = [errors[g][f] for g in groups]
            b = ax.bar(xs, heights, width, color=_format_color(f), label=f,
                       hatch="//" if f.endswith("+dq") else None, edgecolor="white",
                       linewidth=0)
            _label_bars(ax, b, fmt)
            for i, g in enumerate(groups):
                if spread and g in spread:
                    ax.errorbar(xs[i], heights[i], yerr=spread[g][f], fmt="none",
                                ecolor="black", capsize=3, lw=1)
        ax.set_xticks(x, groups)
        ax.set_ylabel(ylabel)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)
        ax.set_title(title)
        ax.legend(ncols=len(formats), loc="upper left")
        return _finish(fig)


# --- lesson 01: how low-rank is a real fine-tuning update? ------------------------------


def energy_curves(
    spectra: Mapping[str, Sequence[float]],
    mark: Sequence[int] = (1, 4, 16),
    colors: Mapping[str, str] | None = None,
    title: str = "How much of each update a rank-r matrix captures",
) -> Figure:
    """Energy captured by the best rank-r approximation, one line per matrix.

    For singular values s_1 >= s_2 >= ..., the best rank-r approximation (Eckart-Young)
    keeps sum_{i<=r} s_i^2 / sum_i s_i^2 of the squared Frobenius norm. A low-rank matrix
    climbs to 100 % within a few ranks; a random (noise) matrix climbs slowly, about
    linearly. Drawing a noise matrix of the same shape next to real updates shows how much
    structure they have. Dotted vertical lines mark the ranks in ``mark``.

    Args:
        spectra: label -> singular values (any order; sorted here).
        mark: ranks to mark with a vertical line.
        colors: optional label -> colour; by default the course cycle.
    """
    import numpy as np

    _check_nonempty("spectra", spectra)
    with course_style():
        fig, ax = _new()
        for label, values in spectra.items():
            s = np.sort(np.asarray(values, dtype=float))[::-1]
            _check_nonempty(f"spectra[{label!r}]", s)
            energy = 100 * np.cumsum(s**2) / np.sum(s**2)
            kw = {"color": colors[label]} if colors and label in colors else {}
            ax.plot(np.arange(1, len(s) + 1), energy, label=label, **kw)
        for r in mark:
            ax.axvline(r, color=COLORS["base"], ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 102)
        ax.set_xlabel("rank r of the approximation")
        ax.set_ylabel("energy captured (%)")
        ax.set_title(title)
        ax.legend()
        return _finish(fig)


# --- lesson 02: LoRA layers ---------------------------------------------------------------


def update_norms(
    ranks: Sequence[int],
    norms: Mapping[str, Sequence[float]],
    ylabel: str = r"$\|s\,BA\|_F$ after the first steps",
    title: str = "How the update's size depends on the rank",
    colors: Mapping[str, str] | None = None,
    reference: tuple[float, str] | None = None,
) -> Figure:
    """The size of the adapter's update against rank, one line per scaling rule.

    With ``s = alpha / r`` the update ``s B A`` shrinks as r grows (at fixed alpha); rsLoRA's
    ``s = alpha / sqrt(r)`` keeps it about constant (Kalajdzievski, 2023). Both axes are
    logarithmic, so a power law r^p is a straight line of slope p.

    Args:
        ranks: the ranks measured (x axis).
        norms: rule label -> one norm per rank.
        colors: optional label -> colour; the others take the course cycle's colours that
            name no method (not blue, orange, green or grey).
        reference: optional ``(slope, label)``: a dashed grey power law ``r**slope`` through
            the first rule's first point, e.g. ``(-0.5, "1/sqrt(r)")``.
    """
    _check_nonempty("ranks", ranks)
    _check_nonempty("norms", norms)
    for label, ys in norms.items():
        if len(ys) != len(ranks):
            raise ValueError(f"norms[{label!r}] has {len(ys)} values but there are "
                             f"{len(ranks)} ranks: give one norm per rank")
    with course_style():
        fig, ax = _new()
        # rules without a colour take the cycle's non-method colours: a scaling rule is not
        # full fine-tuning, and only the LoRA line should look like LoRA
        method = {COLORS["full"], COLORS["lora"], COLORS["qlora"], COLORS["base"]}
        free = [c for c in _CYCLE if c not in method]
        for i, (label, ys) in enumerate(norms.items()):
            color = colors[label] if colors and label in colors else free[i % len(free)]
            ax.plot(list(ranks), list(ys), marker="o", ms=4, label=label, color=color)
        if reference is not None:
            slope, ref_label = reference
            r0, y0 = ranks[0], next(iter(norms.values()))[0]
            ax.plot(list(ranks), [y0 * (r / r0) ** slope for r in ranks], ls="--", lw=1,
                    color=COLORS["base"], label=ref_label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(ranks), [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        return _finish(fig)


# --- lesson 05: QLoRA ----------------------------------------------------------------------


def bits_per_weight(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    limits: Mapping[str, float] | None = None,
    points: Mapping[str, tuple[int, float]] | None = None,
    title: str = "What a 4-bit weight really costs",
    colors: Mapping[str, str] | None = None,
    points_label: str = "our layers",
    label_offsets: Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """Storage bits per weight against layer size (weights per layer, log scale).

    Small layers pay per-layer constants (codebooks, the double-quantization offset, a
    partial last block), so their cost sits above the large-layer limit; the curves fall
    towards the dashed limit lines as layers grow.

    Args:
        curves: label -> (layer sizes, bits per weight), one line each, e.g. computed with
            ``labkit.quant.bits_per_weight(numel=n)``.
        limits: label -> the large-layer limit, drawn as a dashed line (e.g. 4.127).
        points: label -> (size, bits) of real layers, drawn as dots with their label, one
            legend entry (``points_label``) for all of them.
        colors: optional label -> colour for curves and limits (e.g. a curve and its limit in
            ``COLORS["nf4"]``); others take the course cycle in order.
        label_offsets: optional point label -> (dx, dy) of its text in points, where the
            default, below left of the dot, would touch another curve.
    """
    _check_nonempty("curves", curves)
    with course_style():
        fig, ax = _new()
        for i, (label, (xs, ys)) in enumerate(curves.items()):
            if len(xs) != len(ys):
                raise ValueError(f"curve {label!r}: {len(xs)} sizes but {len(ys)} values")
            _check_nonempty(f"curve {label!r}", xs)
            color = (colors or {}).get(label, _CYCLE[i % len(_CYCLE)])
            ax.plot(xs, ys, label=label, color=color)
        for i, (label, y) in enumerate((limits or {}).items()):
            color = (colors or {}).get(label, _CYCLE[i % len(_CYCLE)])
            ax.axhline(y, ls="--", lw=1, color=color)
            ax.annotate(f"{label}: {y:.3f}", (1.0, y), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
        if points:
            xs, ys = zip(*points.values(), strict=True)
            ax.plot(xs, ys, "o", color="#222222", ms=5, ls="none", label=points_label, zorder=3)
            for label, (x, y) in points.items():
                # below left of a point on a falling curve is clear of that curve
                dx, dy = (label_offsets or {}).get(label, (-5, -5))
                ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                            ha="right" if dx < 0 else "left", va="top" if dy < 0 else "bottom",
                            fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("weights in the layer")
        ax.set_ylabel("bits per weight (all state included)")
        ax.set_title(title)
        ax.legend(loc="upper right")
        return _finish(fig)


# --- lesson 03: fine-tuning ----------------------------------------------------------------


def _method_color(label: str, default: str) -> str:
    """The course colour for a label that names a method ("full ...", "LoRA ..."), else default."""
    low = label.lower()
    for key in ("qlora", "lora", "full"):
        if low.startswith(key):
            return COLORS[key]
    return default


def rank_sweep(
    results: Mapping[str, Mapping[int, tuple[int, float]]],
    full: tuple[int, float] | None = None,
    spread: Mapping[str, Mapping[int, float]] | None = None,
    ylabel: str = "accuracy (%)",
    title: str = "Accuracy against trainable parameters",
    colors: Mapping[str, str] | None = None,
    connect: bool = True,
) -> Figure:
    """Accuracy against trainable parameters (log x), one line per set of target layers.

    Each point is one LoRA rank, written next to it (``r=4``): left of the point for the
    first, third, ... target set and right of it for the others, so that two sets' labels
    at nearby parameter counts do not overwrite each other. Putting both target sets on
    a parameter axis separates two questions: does a set do better at the *same rank*
    (compare points with the same label) or at the *same parameter count* (compare points
    above the same x)? Full fine-tuning, when given, is one point far to the right.

    Args:
        results: target-set label -> {rank: (trainable parameters, accuracy)}.
        full: (trainable parameters, accuracy) of full fine-tuning.
        spread: optional, same keys: half-widths of error bars (e.g. the sd over seeds).
        colors: optional label -> colour; by default the course cycle after LoRA's orange.
        connect: join a set's points with lines. Between far-apart ranks a line suggests
            accuracies nobody measured; ``False`` draws the markers only.
    """
    _check_nonempty("results", results)
    ls = "-" if connect else "none"
    palette = [COLORS["lora"], "#8172B3", "#C44E52", "#937860"]
    with course_style():
        fig, ax = _new()
        for i, (label, by_rank) in enumerate(results.items()):
            _check_nonempty(f"results[{label!r}]", by_rank)
            if spread is not None and set(spread.get(label, {})) != set(by_rank):
                raise ValueError(f"spread[{label!r}] must give one value per rank of "
                                 f"results[{label!r}] (ranks {sorted(by_rank)})")
            ranks = sorted(by_rank)
            xs = [by_rank[r][0] for r in ranks]
            ys = [by_rank[r][1] for r in ranks]
            color = (colors or {}).get(label, palette[i % len(palette)])
            if spread is not None:
                ax.errorbar(xs, ys, yerr=[spread[label][r] for r in ranks], color=color,
                            marker="o", ms=5, capsize=3, ls=ls, label=label)
            else:
                ax.plot(xs, ys, color=color, marker="o", ms=5, ls=ls, label=label)
            dx, ha = (-4, "right") if i % 2 == 0 else (4, "left")
            for r, x, y in zip(ranks, xs, ys, strict=True):
                ax.annotate(f"r={r}", (x, y), textcoords="offset points", xytext=(dx, 5),
                            ha=ha, fontsize=8, color=color)
        if full is not None:
            ax.plot([full[0]], [full[1]], marker="s", ms=7, ls="none", color=COLORS["full"],
                    label="full fine-tuning")
        _accuracy_frame(ax, "trainable parameters", ylabel, title, legend="lower right")
        return _finish(fig)


def lr_sweep(
    results: Mapping[str, Mapping[float, float]],
    ylabel: str = "accuracy (%)",
    title: str = "Learning rate: full fine-tuning vs LoRA",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Accuracy after a fixed budget against the learning rate (log x), one line per method.

    The best learning rate of each line is marked with a star, so the shift between the
    methods' sweet spots is visible at a glance. A label starting with "full" or "LoRA"
    takes that method's course colour.

    Args:
        results: method label -> {learning rate: accuracy}.
        colors: optional label -> colour.
    """
    _check_nonempty("results", results)
    with course_style():
        fig, ax = _new()
        for i, (label, by_lr) in enumerate(results.items()):
            _check_nonempty(f"results[{label!r}]", by_lr)
            if any(not lr > 0 for lr in by_lr):
                raise ValueError(f"results[{label!r}] has a learning rate <= 0: {sorted(by_lr)}")
            lrs = sorted(by_lr)
            ys = [by_lr[lr] for lr in lrs]
            color = (colors or {}).get(label) or _method_color(label, _CYCLE[i % len(_CYCLE)])
            ax.plot(lrs, ys, color=color, marker="o", ms=5, label=label)
            best = max(lrs, key=lambda lr: by_lr[lr])  # ties: the smallest such lr
            ax.plot([best], [by_lr[best]], marker="*", ms=14, ls="none", color=color)
        _accuracy_frame(ax, "learning rate", ylabel, title, legend="best")
        # after the log scale is set (setting a scale resets the tick locators)
        ticks = sorted({lr for by_lr in results.values() for lr in by_lr})
        ax.set_xticks(ticks, [f"{lr:g}" for lr in ticks])
        ax.minorticks_off()
        return _finish(fig)


def _accuracy_frame(ax, xname: str, ylabel: str, title: str, legend: str) -> None:
    """Common frame of the lesson 03 sweeps: log x, a percentage y with room for labels."""
    ax.set_xscale("log")
    ax.set_xlabel(f"{xname} (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-5, 110)  # 0 % and 100 % points stay clear of the frame
    ax.set_title(title)
    ax.legend(loc=legend)


# --- lesson 06: memory ------------------------------------------------------------------

#: Memory of common devices in GiB (2^30 bytes), for the "will it fit?" lines. GPU memory
#: is sold in binary units: an "80 GB" card has 80 GiB (nvidia-smi: 81920 MiB), 85.9 GB of
#: 10^9 bytes. A T4 is sold as 16 GB but nvidia-smi shows 15360 MiB (15 GiB) with ECC on,
#: as in Colab. Nothing is subtracted for the CUDA context (a few hundred MB).
DEVICES = {"8 GB laptop": 8, "16 GB T4": 15, "24 GB": 24, "48 GB": 48, "80 GB": 80}
#: Stacking order of a memory bar (labkit.memory.COMPONENTS, then the optional "recompute"
#: of gradient checkpointing, drawn hatched in the activations' colour).
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "recompute")


def device_gb(gib: float) -> float:
    """A device capacity in GiB (2^30 bytes) expressed in GB (10^9 bytes): 80 -> 85.9."""
    return gib * 2**30 / 1e9


def _check_parts(where: str, parts: Mapping[str, float]) -> None:
    bad = sorted(set(parts) - set(MEMORY_PARTS))
    if bad:
        raise ValueError(f"{where}: unknown memory component(s) {bad}; use {list(MEMORY_PARTS)}")


def _stack(ax, xs, rows: Sequence[Mapping[str, float]], width: float, horizontal=False):
    """Draw stacked bars, one per row, components in MEMORY_PARTS order; returns totals.
    "recompute" is drawn only if some row has it (hatched, in the activations' colour)."""
    bottom = [0.0] * len(rows)
    for part in MEMORY_PARTS:
        vals = [float(r.get(part, 0.0)) for r in rows]
        if part == "recompute" and not any(vals):
            continue
        style = dict(color=COLORS["activations"], hatch="///", edgecolor="white", lw=0,
                     label="recompute (one block, checkpointing)") if part == "recompute" \
            else dict(color=COLORS[part], label=part)
        if horizontal:
            ax.barh(xs, vals, height=width, left=bottom, **style)
        else:
            ax.bar(xs, vals, width=width, bottom=bottom, **style)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    return bottom


def memory_stack(
    data: Mapping[str, Mapping[str, Mapping[str, float]]],
    devices: Mapping[str, float] | None = None,
    title: str = "Training memory by method and model size",
) -> Figure:
    """Stacked bars of training memory (GB): one panel per method, one bar per model.

    Each bar stacks weights, gradients, optimizer state, activations and, if given, the
    recompute term of gradient checkpointing (the colours of ``COLORS``); its total is
    written on top. Every panel has its own y scale (full fine-tuning of a 65B model needs
    about 20 times what QLoRA needs); the figure's title says so.

    Dashed lines mark device memory, so "does it fit?" is read off the figure. A panel
    draws only the devices between its smallest bar and the smallest device that every bar
    fits (the panel reaches up to it): a device below every bar fits none of them and would
    only crowd the bottom of the panel. Each line is named in
    the right margin, outside the bars, with its capacity in GiB; a name that would sit on
    the previous one is left out (the line stays).

    Args:
        data: method label -> model label -> component -> GB (10^9 bytes), e.g.
            ``{"QLoRA": {"7B": {"weights": 3.9, "gradients": 0.08, ...}}}``.
        devices: label -> GiB (2^30 bytes, as GPU memory is sold); default :data:`DEVICES`.
    """
    _check_nonempty("data", data)
    devices = DEVICES if devices is None else devices
    with course_style():
        fig, axes = _new(1, len(data), figsize=(4.4 * len(data), 4.2), squeeze=False)
        for ax, (method, models) in zip(axes[0], data.items(), strict=True):
            _check_nonempty(f"data[{method!r}]", models)
            for m, parts in models.items():
                _check_parts(f"data[{method!r}][{m!r}]", parts)
            labels = list(models)
            totals = _stack(ax, range(len(labels)), [models[m] for m in labels], 0.6)
            for i, t in enumerate(totals):
                ax.annotate(f"{t:,.0f}" if t >= 100 else f"{t:.1f}", (i, t),
                            textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
            top = max(totals) * 1.12
            above = [device_gb(g) for g in devices.values() if device_gb(g) >= max(totals)]
            if above:  # show the smallest device that every bar fits
                top = max(top, min(above) * 1.08)
            last = None  # name a line only if it is not crowded onto the previous name
            for name, gib in sorted(devices.items(), key=lambda kv: kv[1]):
                gb = device_gb(gib)
                if not min(totals) <= gb <= top:
                    continue
                ax.axhline(gb, color="#555555", ls="--", lw=0.8)
                if last is None or gb - last >= 0.06 * top:
                    ax.annotate(f"{name}: {gib:g} GiB", (1, gb), xycoords=ax.get_yaxis_transform(),
                                xytext=(3, 0), textcoords="offset points", ha="left",
                                va="center", fontsize=7, color="#555555", annotation_clip=False)
                    last = gb
            ax.set_ylim(0, top)
            ax.set_xticks(list(range(len(labels))), labels)
            ax.set_title(method)
            ax.set_ylabel("GB (10^9 bytes)")
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=len(names))
        fig.suptitle(f"{title} (each panel has its own y scale)", fontweight="bold")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        return fig


def bytes_per_param(rows: Mapping[str, Mapping[str, float]],
                    title: str = "Bytes per model parameter") -> Figure:
    """Horizontal stacked bars: bytes each method spends per parameter of the model.

    Full fine-tuning in fp32 with AdamW costs 4 (weights) + 4 (gradients) + 8 (two
    moments) = 16 bytes per parameter before activations; LoRA keeps the 2-byte weights
    and almost nothing else; QLoRA's weights cost about 0.5 byte.

    Args:
        rows: method label -> component -> bytes per parameter.
    """
    _check_nonempty("rows", rows)
    for k, v in rows.items():
        _check_parts(f"rows[{k!r}]", v)
    labels = list(rows)
    with course_style():
        fig, ax = _new(figsize=(7, 0.55 * len(labels) + 1.6))
        totals = _stack(ax, range(len(labels)), [rows[k] for k in labels], 0.6, horizontal=True)
        for i, t in enumerate(totals):
            ax.annotate(f"{t:.2f} B", (t, i), textcoords="offset points", xytext=(3, 0),
                        va="center", fontsize=8)
        ax.set_yticks(list(range(len(labels))), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, max(totals) * 1.15)
        ax.set_xlabel("bytes per parameter")
        ax.set_title(title)
        ax.legend(loc="lower right", ncol=2)
        return _finish(fig)


# --- lesson 09: scaling out -----------------------------------------------------------------


def human_bytes(n: float) -> str:
    """``14336`` -> ``"14.3 kB"``: decimal units (kB = 10^3 B, MB = 10^6 B, GB = 10^9 B)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,.0f} B"


def comm_bytes(panels: Mapping[str, Mapping[str, float]],
               xlabel: str = "gradient bytes all-reduced per step (log scale)") -> Figure:
    """Side-by-side panels of dots on a log axis: what each method sends over the network
    per step, e.g. the course model measured next to a 7B model counted.

    A log axis because the values span orders of magnitude: full fine-tuning all-reduces
    every gradient (4 bytes x all parameters in fp32), LoRA only the adapters' r * (d + k)
    per layer. Dots, not bars: on a log axis a bar's length depends on where the axis
    starts and means nothing. Each dot is labelled with its bytes and, after the first
    row, with the ratio to the first row ("92x less").

    Args:
        panels: panel title -> (method label -> bytes), rows drawn top to bottom; the first
            row is the reference of the ratios; a label starting with "full", "LoRA" or
            "QLoRA" gets that method's colour.
    """
    _check_nonempty("panels", panels)
    for title, rows in panels.items():
        _check_nonempty(f"panels[{title!r}]", rows)
        bad = {k: v for k, v in rows.items() if not v > 0}
        if bad:
            raise ValueError(f"panels[{title!r}] has values that a log axis cannot show "
                             f"(must be > 0): {bad}")
    n_rows = max(len(r) for r in panels.values())
    with course_style():
        fig, axes = _new(1, len(panels), figsize=(5.2 * len(panels), 0.6 * n_rows + 1.6),
                         squeeze=False)
        for ax, (title, rows) in zip(axes[0], panels.items(), strict=True):
            labels = list(rows)
            ref = rows[labels[0]]
            for i, lb in enumerate(labels):
                v = rows[lb]
                ax.scatter([v], [i], s=45, color=_method_color(lb, COLORS["base"]), zorder=2)
                text = human_bytes(v) if i == 0 else f"{human_bytes(v)}, {ref / v:,.0f}x less"
                ax.annotate(text, (v, i), textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=8)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_ylim(len(labels) - 0.5, -0.7)  # first row on top, room for the labels
            ax.set_xscale("log")
            ax.set_xlim(min(rows.values()) / 6, max(rows.values()) * 6)
            ax.grid(axis="x", which="major", alpha=0.3)
            ax.set_xlabel(xlabel)
            ax.set_title(title)
        return _finish(fig)
