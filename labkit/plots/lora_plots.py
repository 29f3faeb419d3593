"""Figures of lessons 01-02: what LoRA saves, how low-rank an update is, and how its size
depends on the rank.

``lora_savings`` and ``model_savings`` count trainable parameters (lesson 01),
``singular_values`` and ``energy_curves`` show the spectrum of a weight update and what a
rank-r matrix captures of it (lesson 01), ``update_norms`` compares LoRA's scaling rules
(lesson 02).

Imports: matplotlib, numpy and :mod:`labkit.plots.style` (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from labkit.lora.counts import adapter_params
from labkit.plots.style import _CYCLE, COLORS, _check_nonempty, _finish, _new, course_style

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
            share = [100 * adapter_params(d, k, r) / (d * k) for r in ranks]
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
