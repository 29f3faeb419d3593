"""Score an "explain in your own words" answer against a checklist of concepts.

An explain item (``quizzes/*.yaml``, ``kind: explain``) lists **concepts**, each with phrases
that express it, and its own **misconceptions**, each with phrases and a message. On top of
those, the :data:`~labkit.quiz.explain_roles.GLOBAL_MISCONCEPTIONS` (adapters in 4 bits,
LoRA shrinks the model, from scratch, 4 bits make training faster, merged during training,
A and B both zero, LoRA steps much faster, all weights trained) are checked on every item.

The rules, so that a learner and a teacher can predict a score:

1. **Reading.** The answer is read by :func:`labkit.quiz.explain_text.analyse`: sentences,
   clauses, lemmas, the shared synonym table (:mod:`labkit.quiz.lexicon`), formulas,
   negation. A phrase of the bank is read the same way, so a phrase is a set of *slots*
   (its content words, as synonym classes), not a fixed string: "frozen base" is credited by
   "the pretrained weights are kept unchanged", "W stays fixed" or "the base is not updated".
2. **Concepts.** A concept is credited when one of its phrases has all its slots in one
   sentence of the answer, in any order, each with the phrase's polarity (a phrase "no
   gradients" needs a negated "gradients"; "frozen" is not credited by "not frozen").
3. **Misconceptions.** An item misconception's phrase must have all its slots, with the
   polarity written, in its word order within one clause, at most
   :data:`MISCONCEPTION_WINDOW` tokens apart, with only small words between them ("sends the
   whole model" matches "sends the model"; "sends gradients of the model" does not); a global
   one must fit its role pattern. A negated claim ("the adapters are not quantized",
   "LoRA does not train from scratch") is no misconception. A misconception found fails the
   answer whatever else it covers, and its message says what is true.
4. **No keyword salad.** A sentence of key terms without relating words earns nothing, nor
   does an answer that is such a list as a whole (:mod:`~labkit.quiz.explain_text`, rule 7).
   Questions ("Does LoRA ...?") earn nothing and state no misconception.

An answer **passes** when it has every concept and no misconception. The score is
"k/n concepts"; :meth:`ExplainResult.checklist` shows each concept covered or not. No
threshold was fitted: every rule above is a reading rule or a synonym.

Imports: labkit.quiz.explain_text, labkit.quiz.explain_roles (lemminflect when scoring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from labkit.quiz.explain_roles import GLOBAL_MISCONCEPTIONS, Pattern, Slot
from labkit.quiz.explain_text import MIN_RELATION_SHARE, MIN_WORDS, analyse, words

__all__ = ["MIN_WORDS", "MIN_RELATION_SHARE", "MISCONCEPTION_WINDOW", "ExplainResult",
           "score_explanation", "phrase_pattern", "words", "GLOBAL_MISCONCEPTIONS"]

MISCONCEPTION_WINDOW = 8


@lru_cache(maxsize=4096)
def phrase_pattern(phrase: str, unit: str = "sentence") -> Pattern:
    """The slots of a bank phrase: its content words as synonym classes, with polarity."""
    slots = []
    for sentence in analyse(phrase):
        for tok in sentence.tokens:
            if tok.symbol or tok.function or "BREAK" in tok.classes:
                continue
            classes = tok.classes - {"BREAK"}
            slots.append(Slot(frozenset(classes), tok.lemmas if not classes else frozenset(),
                              tok.negated))
    if unit == "sentence":
        return Pattern(tuple(slots))
    return Pattern(tuple(slots), unit=unit, ordered=True, window=MISCONCEPTION_WINDOW, tight=True)


@dataclass
class ExplainResult:
    """The outcome of scoring one explanation.

    Attributes:
        hit: names of the concepts credited, in checklist order.
        missed: names of the concepts not credited, in checklist order.
        misconceptions: messages of the misconceptions found.
        misconception_ids: their ids (a global id, or ``item-N`` for the item's N-th).
        notes: other remarks (keyword salad), in plain words.
    """

    hit: list[str]
    missed: list[str]
    misconceptions: list[str] = field(default_factory=list)
    misconception_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.hit) + len(self.missed)

    @property
    def score(self) -> float:
        """Fraction of concepts credited, 0..1 (a misconception fails the answer instead)."""
        return len(self.hit) / self.total if self.total else 0.0

    @property
    def passed(self) -> bool:
        return not self.missed and not self.misconceptions

    def checklist(self) -> list[tuple[str, bool]]:
        """Every concept in checklist order, with whether it was covered."""
        covered = set(self.hit)
        order = self.hit + self.missed
        return [(name, name in covered) for name in self._order or order]

    _order: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """The checklist as text, e.g. ``3/4 concepts.`` then ``[x] frozen base`` lines."""
        lines = [f"{len(self.hit)}/{self.total} concepts."]
        if self.hit:
            lines.append("Covered: " + ", ".join(self.hit) + ".")
        if self.missed:
            lines.append("Missed: " + ", ".join(self.missed) + ".")
        lines += [f"  [{'x' if ok else ' '}] {name}" for name, ok in self.checklist()]
        lines += [f"Misconception: {m}" for m in self.misconceptions]
        lines += self.notes
        return "\n".join(lines)


def score_explanation(text: str, concepts: list[dict], misconceptions: list[dict]) -> ExplainResult:
    """Score free text against a concept checklist (rules in the module docstring).

    Args:
        text: the learner's answer.
        concepts: ``[{"name": str, "phrases": [str, ...]}, ...]``.
        misconceptions: the item's own, ``[{"phrases": [str, ...], "message": str}, ...]``;
            the global misconceptions are always checked as well.

    Returns:
        An :class:`ExplainResult`; ``f"{len(hit)}/{total} concepts"`` is the headline.
    """
    sentences = analyse(text)
    notes: list[str] = []
    ids, messages = [], []
    for mis in GLOBAL_MISCONCEPTIONS:
        if mis.find(sentences):
            ids.append(mis.id)
            messages.append(mis.message)
    for n, mis in enumerate(misconceptions):
        patterns = [phrase_pattern(p, "clause") for p in mis["phrases"]]
        if any(p.find(s) is not None for p in patterns for s in sentences):
            ids.append(f"item-{n}")
            messages.append(mis["message"])

    hit, missed = [], []
    for concept in concepts:
        patterns = [phrase_pattern(p) for p in concept["phrases"]]
        stated = any(p.find(s) is not None for p in patterns for s in sentences)
        (hit if stated else missed).append(concept["name"])

    if sentences and not any(s.prose for s in sentences):
        notes.append(
            "Write whole sentences: a list of key terms does not say how they fit together, "
            "so it is not scored."
        )
    elif any(not s.prose for s in sentences):
        numbers = ", ".join(str(i + 1) for i, s in enumerate(sentences) if not s.prose)
        notes.append(
            f"Sentence(s) {numbers} read like a list of terms (few small words like 'the', "
            "'is', 'by' or symbols like '='), so their key terms are not counted."
        )
    result = ExplainResult(hit, missed, messages, ids, notes)
    result._order = [c["name"] for c in concepts]
    return result

