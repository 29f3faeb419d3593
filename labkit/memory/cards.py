"""Will it fit? Named GPUs, their usable memory, and a verdict with the settings that help.

:func:`will_it_fit` sets :func:`labkit.memory.estimate_peak` of a QLoRA (or LoRA) step
beside a card's capacity and answers one of three things:

* ``"fits"``: the allocator's peak, the CUDA context and any paged optimizer state all fit;
* ``"fits only with a paged optimizer"``: with plain AdamW it does not, but with paged AdamW
  the allocator's peak and the context fit; the moments then live in CUDA unified memory,
  which the driver moves to host RAM under pressure (slower steps, not a crash);
* ``"does not fit"``: not even then.

It also tries the usual levers one at a time (gradient checkpointing, half the batch, half
the sequence length, half the rank) and lists those that would make the step fit.

Capacities are what ``nvidia-smi`` reports as the card's total memory (MiB = 2^20 bytes),
with the source of each figure. A card that drives a display loses a few hundred MiB more;
the CUDA context (:data:`labkit.memory.CUDA_CONTEXT`) was measured on an H200 and differs
by a few hundred MiB between cards and CUDA versions: keep a margin.

Imports: :mod:`labkit.memory.peak`, :mod:`labkit.memory.breakdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labkit.memory.breakdown import MiB
from labkit.memory.peak import PeakEstimate, estimate_peak


@dataclass(frozen=True)
class Card:
    """A GPU: its usable memory, whether it computes in bf16, and where the figure is from."""

    name: str
    mib: int            # total memory as nvidia-smi reports it, MiB
    bf16: bool          # bf16 autocast (Ampere and later); else fp16 with a loss scaler
    hopper: bool        # Hopper or later: PyTorch's larger cuBLAS workspace
    source: str

    @property
    def bytes(self) -> int:
        return self.mib * MiB


_MODAL = "nvidia-smi totals listed in modal-labs/modal-client PR #2797 (2025)"
CARDS: dict[str, Card] = {
    "laptop-8gb": Card("8 GB laptop GPU", 8192, True, False,
                       "nominal 8 GiB (no measurement here; nvidia-smi shows a little less)"),
    "t4": Card("NVIDIA T4 (Colab's free GPU)", 15360, False, False, _MODAL),
    "rtx4090": Card("GeForce RTX 4090 24 GB", 24564, True, False,
                    "nvidia-smi in RLinf/RLinf issue #255 (2025)"),
    "a100-40gb": Card("A100 40 GB", 40960, True, False, _MODAL),
    "a100-80gb": Card("A100 80 GB", 81920, True, False, _MODAL),
    "h100-80gb": Card("H100 80 GB HBM3", 81559, True, True, _MODAL),
    "h200": Card("H200", 143771, True, True, "nvidia-smi on this course's GPU check (2026)"),
}

VERDICTS = ("fits", "fits only with a paged optimizer", "does not fit")


@dataclass
class FitReport:
    """The verdict for one card, the estimate behind it, and the settings that would help."""

    card: Card
    verdict: str
    estimate: PeakEstimate          # with the optimizer asked for
    paged_estimate: PeakEstimate    # the same step with paged AdamW
    levers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        e = self.estimate
        paged = f", paged state {e.paged / MiB:,.0f} MiB" if e.paged else ""
        lines = [f"{self.card.name} ({self.card.mib:,} MiB): {self.verdict}",
                 f"  allocator peak {e.peak / MiB:,.0f} MiB at '{e.moment}', CUDA context "
                 f"{e.context / MiB:,.0f} MiB{paged}"]
        if self.verdict == VERDICTS[1]:
            q = self.paged_estimate
            lines.append(f"  with paged AdamW: allocator peak {q.peak / MiB:,.0f} MiB, "
                         f"{q.paged / MiB:,.0f} MiB of moments in unified memory")
        if self.verdict != "fits" and self.levers:
            lines.append("  would fit with: " + "; ".join(self.levers))
        return "\n".join(lines)


def _fits(e: PeakEstimate, card: Card, count_paged: bool) -> bool:
    return e.peak + e.context + (e.paged if count_paged else 0) <= card.bytes


def will_it_fit(config, card: str | Card, method: str = "qlora", batch: int = 1,
                seq_len: int = 512, *, r: int = 16, optimizer: str = "adamw",
                gradient_checkpointing: bool = False, **kwargs) -> FitReport:
    """Whether one training step of ``config`` fits on ``card`` (a name of :data:`CARDS`).

    The step is labkit's loop under autocast in bf16, or fp16 on a card without bf16.
    Other keyword arguments go to :func:`estimate_peak` (``targets``, ``loop``...).

    Raises:
        ValueError: an unknown card (lists the known), or what :func:`estimate_peak` raises.
    """
    if isinstance(card, str):
        if card not in CARDS:
            raise ValueError(f"unknown card {card!r}; known: {', '.join(CARDS)} "
                             "(or pass a labkit.memory.Card)")
        card = CARDS[card]
    kw = {"compute_dtype": "bf16" if card.bf16 else "fp16", "hopper": card.hopper, **kwargs}

    def est(**change) -> PeakEstimate:
        args = {"batch": batch, "seq_len": seq_len, "r": r, "optimizer": optimizer,
                "gradient_checkpointing": gradient_checkpointing, **change}
        return estimate_peak(config, method, args.pop("batch"), args.pop("seq_len"),
                             **args, **kw)

    plain, paged = est(), est(optimizer="paged_adamw")
    if _fits(plain, card, count_paged=True):
        verdict = VERDICTS[0]
    elif _fits(paged, card, count_paged=False):
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    levers = []
    if verdict != "fits":
        tries = {"gradient checkpointing": {"gradient_checkpointing": True},
                 f"batch {batch // 2}": {"batch": batch // 2},
                 f"sequence length {seq_len // 2}": {"seq_len": seq_len // 2},
                 f"rank {r // 2}": {"r": r // 2}}
        for label, change in tries.items():
            if gradient_checkpointing and "gradient_checkpointing" in change:
                continue
            if 0 in change.values():
                continue
            if _fits(est(**change), card, count_paged=True):
                levers.append(label)
    return FitReport(card, verdict, plain, paged, levers)
