"""Figures of lessons 04-05 (quantization, QLoRA): where each 4-bit format puts its levels,
the round-trip error of each format, and what a 4-bit weight really costs in bits.

Formats keep colours of their own (``COLORS["nf4"]``, ``"fp4"``, ``"int4"``), apart from
the method colours; unquantized baselines are grey.

Imports: matplotlib, numpy and :mod:`labkit.plots.style` (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from labkit.plots.style import (
    _CYCLE,
    COLORS,
    _check_nonempty,
    _finish,
    _label_bars,
    _new,
    course_style,
)

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
