"""Patterns over analysed text, and the misconceptions checked on every explain item.

A :class:`Pattern` is a set of *slots* that must all be found in one unit of an answer (a
sentence or a clause, see :mod:`labkit.quiz.explain_text`). A slot names synonym classes of
:data:`labkit.quiz.lexicon.SYNONYMS` (or, for a word the table does not know, its lemmas) and
whether it must be negated. So "frozen base" is the slots ``FROZEN`` + ``BASE`` in any order,
and it matches "the pretrained weights are kept unchanged" as well as "W stays fixed".

**Role checks.** A misconception is a claim about *which part* does what, so its patterns
can also require an order, a window (at most N tokens from the first slot to the last), no
other role-bearing word between two slots (``gap_free``: "the adapters train on the 4-bit
base" has ``BASE`` between the adapters and the 4 bits, so it does not say the adapters are
4-bit), no such word before the first slot (``lead_free``: "the model you attach the adapters
to is quantized") or right after the last (``next_free``: "4-bit *weights*"), only small words
between the slots (``tight``), a word right before the last slot (``last_after``: "kept *in*
16-bit"), context that cancels it in the sentence or clause (``unless``: a sentence about
*full fine-tuning* may say "bf16 weights"), or context it needs (``require``). A slot is
matched only where its polarity fits, so "the adapters are not quantized" states no
misconception.

:data:`GLOBAL_MISCONCEPTIONS` are checked on every item, whatever its own list says; each
has an id, a message that says what is true, and its patterns. Item misconceptions (YAML)
stay on their item.

Imports: labkit.quiz.explain_text.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from labkit.quiz.explain_text import Sentence, Token


@dataclass(frozen=True)
class Slot:
    classes: frozenset = frozenset()
    words: frozenset = frozenset()
    negated: bool = False

    def fits(self, tok: Token) -> bool:
        if tok.negated != self.negated:
            return False
        if self.classes:
            return bool(tok.classes & self.classes)
        return bool(tok.lemmas & self.words) and not tok.symbol


@dataclass(frozen=True)
class Pattern:
    slots: tuple[Slot, ...]
    unit: str = "sentence"
    ordered: bool = False
    window: int | None = None
    gap_free: frozenset = frozenset()
    lead_free: frozenset = frozenset()
    next_free: frozenset = frozenset()
    tight: bool = False
    last_after: frozenset = frozenset()
    unless: frozenset = frozenset()
    unless_clause: frozenset = frozenset()
    require: frozenset = frozenset()

    def find(self, sentence: Sentence) -> list[int] | None:
        """Positions of one match in ``sentence`` (first slot first), or None."""
        if not sentence.asserted or not sentence.prose or not self.slots:
            return None
        toks = sentence.tokens
        if _has(toks, self.unless) or (self.require and not _has(toks, self.require)):
            return None
        units = [list(range(len(toks)))] if self.unit == "sentence" else _clauses(toks)
        for unit in units:
            hit = self._find_in(toks, unit)
            if hit is not None:
                return hit
        return None

    def _find_in(self, toks: list[Token], unit: list[int]) -> list[int] | None:
        if self.unless_clause and _has([toks[i] for i in unit], self.unless_clause):
            return None
        options = [[i for i in unit if slot.fits(toks[i])] for slot in self.slots]
        if not all(options):
            return None
        if self.lead_free:
            lead = [i for i in unit if toks[i].classes & self.lead_free]
            options = [[i for i in opts if not lead or i < lead[0]] for opts in options]
            if not all(options):
                return None
        if not (self.ordered or self.window or self.gap_free or self.last_after or self.tight
                or self.next_free):
            return [opts[0] for opts in options]
        for combo in product(*options):
            if self._ok(toks, combo):
                return list(combo)
        return None

    def _ok(self, toks: list[Token], combo: tuple[int, ...]) -> bool:
        if len(set(combo)) < len(combo):
            return False
        if self.ordered and list(combo) != sorted(combo):
            return False
        lo, hi = min(combo), max(combo)
        if self.window is not None and hi - lo > self.window:
            return False
        after = toks[combo[-1] + 1] if combo[-1] + 1 < len(toks) else None
        if self.next_free and after is not None and after.classes & self.next_free:
            return False  # "4-bit weights": the 4 bits belong to the next word
        gap = [toks[i] for i in range(lo + 1, hi) if i not in combo]
        if self.gap_free and any(t.classes & self.gap_free for t in gap):
            return False
        if self.tight and any(t.classes - _LOOSE for t in gap):
            return False  # "sends the model", not "sends the gradients of the model"
        return not self.last_after or (combo[-1] > 0 and toks[combo[-1] - 1].text
                                       in self.last_after)


_LOOSE = frozenset({"ALL", "MUCH"})


def _has(toks: list[Token], classes: frozenset) -> bool:
    return any(t.classes & classes and not t.negated for t in toks)


def _clauses(toks: list[Token]) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for i, t in enumerate(toks):
        out.setdefault(t.clause, []).append(i)
    return list(out.values())


def P(*slots: str, **options) -> Pattern:  # noqa: N802 - reads as a table below
    """A pattern from slot specs: ``"ADAPTER|AB"`` (any of these classes), ``"!GRAD"`` (the
    slot must be negated). Set options (``unless``, ``gap_free``...) are given as strings."""
    parsed = []
    for spec in slots:
        negated = spec.startswith("!")
        parsed.append(Slot(frozenset(spec.lstrip("!").split("|")), negated=negated))
    for key in ("gap_free", "lead_free", "next_free", "last_after", "unless", "unless_clause",
                "require"):
        if key in options:
            options[key] = frozenset(options[key].split())
    return Pattern(tuple(parsed), **options)


@dataclass(frozen=True)
class Misconception:
    id: str
    message: str
    patterns: tuple[Pattern, ...]

    def find(self, sentences: list[Sentence]) -> bool:
        return any(p.find(s) is not None for s in sentences for p in self.patterns)


_PART = "ADAPTER|AB|LOWRANK_PART|GRAD|ACTIVATION"
_LOWBIT = "FOURBIT|QUANT|LOWBITS"
_QUANTISH = "QLORA QUANT FOURBIT EIGHTBIT LOWBITS HIGHBITS DEQUANT BIT"
_HOLDER = "BASE MODEL PARAM W"

GLOBAL_MISCONCEPTIONS: tuple[Misconception, ...] = (
    Misconception("adapters-in-4-bit", (
        "Only the frozen base is stored in 4 bits (NF4). The LoRA adapters, their gradients "
        "and optimizer state, and the activations stay in 16 or 32 bits; keeping the base "
        "in 16 bits would save nothing."), (
        P(_PART, _LOWBIT, unit="clause", ordered=True, window=10, lead_free=_HOLDER,
          next_free=_HOLDER, gap_free=f"{_HOLDER} DEQUANT HIGHBITS",
          unless_clause="FULL_FT VARIANT_SPLIT"),
        P(_LOWBIT, _PART, unit="clause", ordered=True, window=3,
          gap_free=f"{_HOLDER} HIGHBITS BREAK"),
        P("BASE|MODEL|PARAM", "HIGHBITS", unit="clause", ordered=True, window=8,
          gap_free=f"{_PART.replace('|', ' ')} OPT DEQUANT MATH", last_after="in at as",
          require="QLORA QUANT FOURBIT LOWBITS", unless="FULL_FT PLAIN DEQUANT MATH"),
    )),
    Misconception("quantized-base-trained", (
        "The 4-bit base is frozen: QLoRA never updates the quantized weights, and there is no "
        "full fine-tuning in 4 bits. Gradients flow through the base to the 16/32-bit "
        "adapters, which are the only weights that train."), (
        P("TRAIN", _LOWBIT, "PARAM|BASE|MODEL", unit="clause", ordered=True, window=5,
          gap_free=f"BREAK {_PART.replace('|', ' ')} DEQUANT FROZEN", unless_clause="FROZEN"),
        P(_LOWBIT, "PARAM|BASE|MODEL", "TRAIN", unit="clause", ordered=True, window=6,
          gap_free=f"BREAK {_PART.replace('|', ' ')} DEQUANT", unless_clause="FROZEN"),
        P("FULL_FT", _LOWBIT, unit="clause", window=8, unless_clause="FROZEN ADAPTER"),
    )),
    Misconception("lora-shrinks-model", (
        "LoRA does not make the model smaller or compress it: the base keeps every weight and "
        "the adapters add a few (merged, the model has exactly its old size). Only "
        "quantization, as in QLoRA, stores the base in fewer bits."), (
        P("SHRINK", "MODEL|PARAM", unit="clause", window=6, unless=_QUANTISH,
          unless_clause="TRAIN GRAD OPT MEMORY ADAPTER STORAGE UPDATE"),
        P("MODEL", "SMALLER", unit="clause", ordered=True, window=5, unless=_QUANTISH,
          unless_clause="TRAIN GRAD OPT MEMORY GPU ADAPTER STORAGE UPDATE FRACTION"),
        P("SMALLER", "MODEL", unit="clause", ordered=True, window=2, unless=_QUANTISH,
          unless_clause="TRAIN GPU MEMORY ADAPTER STORAGE"),
        P("DECOMPOSE|REPLACE", "PARAM|MODEL|LAYER", unit="clause", window=6,
          require="LOWRANK LOWRANK_PART DECOMPOSE",
          unless_clause="UPDATE ADAPTER AB VARIANT_SPLIT"),
    )),
    Misconception("lora-from-scratch", (
        "LoRA does not train a model from scratch or replace the network: it starts from a "
        "pretrained model, keeps it, and learns a small update to it."), (
        P("SCRATCH", unit="clause"),
        P("REPLACE", "MODEL|BASE", unit="clause", ordered=True, window=5,
          unless_clause="STORAGE COPY W"),
        P("BUILD|TRAIN", "NEW", "MODEL", unit="clause", ordered=True, window=5),
        P("!NEED", "!MODEL|BASE", "!ANYMORE", unit="clause"),
    )),
    Misconception("quantization-faster", (
        "Storing the base in 4 bits saves memory, not time: each layer is dequantized to 16 "
        "bits before its matrix multiply, so a QLoRA training step is a little slower than a "
        "LoRA step, not faster."), (
        P("QLORA|QUANT|FOURBIT|EIGHTBIT|LOWBITS", "FAST", unit="sentence", unless="INFERENCE"),
        P("FOURBIT|QUANT|LOWBITS", "MATH", "CHEAP|FAST", unit="clause"),
    )),
    Misconception("lora-faster-per-step", (
        "A LoRA step is not much faster than a full fine-tuning step: the forward and backward "
        "passes still run through every frozen layer (the course measured LoRA steps no "
        "faster). What LoRA saves is memory, and storage."), (
        P("FAST", "STEP", unit="clause", unless=f"{_QUANTISH} INFERENCE",
          unless_clause="SEND TRAFFIC ALLREDUCE"),
        P("MUCH|MULT", "FAST", unit="clause", ordered=True, window=3,
          unless=f"{_QUANTISH} INFERENCE", unless_clause="SEND TRAFFIC ALLREDUCE"),
    )),
    Misconception("merged-during-training", (
        "The adapters are merged into W only after training (for deployment). During "
        "training W stays frozen and separate; only A and B change."), (
        P("MERGE", "DURING", unit="clause"),
    )),
    Misconception("both-start-at-zero", (
        "Only B starts at zero; A starts random. B A = 0 makes the layer start as the "
        "pretrained one, and the random A lets gradients reach B (with both at zero neither "
        "would ever change)."), (
        P("BOTH", "ZERO", unit="clause", ordered=True, window=8,
          gap_free="MAT_A MAT_B RANDOM"),
    )),
    Misconception("all-weights-trained", (
        "LoRA does not train all the weights: the pretrained weights stay frozen and only the "
        "small adapter matrices train."), (
        P("TRAIN", "ALL", "PARAM|MODEL|BASE", unit="clause", ordered=True, window=5,
          gap_free="BREAK ADAPTER AB LOWRANK_PART", unless="FULL_FT",
          unless_clause="FROZEN FRACTION LESS SMALL"),
        P("ALL", "PARAM|MODEL|BASE", "TRAIN", unit="clause", ordered=True, window=5,
          gap_free="BREAK ADAPTER AB LOWRANK_PART", unless="FULL_FT",
          unless_clause="FROZEN FRACTION LESS SMALL"),
    )),
)
