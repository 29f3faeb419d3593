"""Figures of lesson 03 (fine-tuning): accuracy against trainable parameters for a sweep of
ranks and target layers, and accuracy against the learning rate for full fine-tuning and
LoRA. Both share one frame (log x, a percentage y with room for labels).

Imports: matplotlib and :mod:`labkit.plots.style` (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from labkit.plots.style import (
    _CYCLE,
    COLORS,
    _check_nonempty,
    _finish,
    _method_color,
    _new,
    course_style,
)

# --- lesson 03: fine-tuning ----------------------------------------------------------------


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
