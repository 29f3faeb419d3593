"""Figures of bytes: training memory by component against device memory (lesson 06), and
the gradient bytes each method sends over the network per step (lesson 09).

Also the unit helpers the lessons print with: ``device_gb`` (a device's GiB in GB) and
``human_bytes`` (decimal kB / MB / GB).

Imports: matplotlib and :mod:`labkit.plots.style` (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from labkit.plots.style import COLORS, _check_nonempty, _finish, _method_color, _new, course_style

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
