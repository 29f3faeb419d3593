"""Score an "explain in your own words" answer against a checklist of concepts.

An explain item lists concepts, each with the phrases (and synonyms) that express it, and
misconceptions, each with phrases that state something false. Scoring is deliberately simple
and documented, so a learner (and a teacher) can predict it:

1. **Words.** Text is lower-cased, split into words (``low-rank`` is two words, ``doesn't``
   reads ``does not``), and each word is cut to a rough stem: the suffixes ``-ations``,
   ``-ation``, ``-ings``, ``-ing``, ``-ies`` (to ``y``), ``-es``, ``-ed``, ``-s`` and then a
   final ``-e`` are removed while at least three letters remain. So ``trains``, ``trained``
   and ``training`` all read ``train``; ``quantize`` and ``quantization`` both ``quantiz``.
2. **Phrases** match as consecutive stems inside one sentence (sentences end at ``.``, ``!``,
   ``?``, ``;`` or a line break).
3. **Negation.** A match preceded, within three words of the same sentence, by a negation
   (``not``, ``no``, ``never``, ``without``, ``cannot``, ...) is *negated*.
   A negated misconception is fine ("LoRA does not train all the weights"); a negated concept
   is not credited ("the base is not frozen").
4. **Misconceptions** that appear un-negated are flagged with the item's message and never
   credited: a concept phrase inside a flagged misconception's words does not count.
5. **Contradiction.** A concept both stated and negated in the same answer is not credited.
6. **Sentences, not keyword salad.** Only sentences that read as prose count: at least
   ``MIN_WORDS`` words, of which at least ``MIN_FUNCTION_SHARE`` are ordinary function words
   (``the``, ``is``, ``of``, ``by``, ``only``...; English prose has 30-50 %) outside the key
   phrases themselves (so the "and" of "A and B" does not count). A list of key terms has
   none and scores nothing; the result says why.
7. **One idea at a time.** One sentence earns at most ``MAX_PER_SENTENCE`` concepts (the
   first ones of the checklist that it states), so a single sentence stuffed with every key
   phrase cannot earn full marks.

The score is "k/n concepts"; an answer passes when it has every concept and no misconception.

Imports: the standard library only (no labkit module), so it can be read and tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MIN_WORDS = 5
MIN_FUNCTION_SHARE = 0.15
MAX_PER_SENTENCE = 2
NEGATION_WINDOW = 3

_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "es", "ed", "s")
_NEGATIONS = {"not", "no", "never", "without", "cannot", "nor", "neither", "none", "nothing"}
_FUNCTION_WORDS = set(
    """
    a an the is are was were be been it its this that these those of to by in on for with
    from into as at and or but so than then only instead while which who can does do did has
    have had will would we you they i our your their because each every some not no just
    also there what how when if about after before through
    """.split()
)
_SENTENCE_END = re.compile(r"[.!?;\n]+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word: str) -> str:
    """Cut a lower-case word to a rough stem (see the module docstring, rule 1)."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-case words of ``text``; ``n't`` reads as a separate ``not``."""
    text = text.lower().replace("\u2019", "'").replace("n't", " not")
    return _WORD.findall(text)


@dataclass
class _Sentence:
    words: list[str]
    stems: list[str]
    prose: bool = False


def _sentences(text: str) -> list[_Sentence]:
    out = []
    for part in _SENTENCE_END.split(text):
        ws = words(part)
        if ws:
            out.append(_Sentence(ws, [stem(w) for w in ws]))
    return out


def _mark_prose(sent: _Sentence, key_phrases: list[list[str]]) -> None:
    """Rule 6; function words inside key phrases ("A and B", "less memory") do not count."""
    inside: set[int] = set()
    for ps in key_phrases:
        for start in _find(sent.stems, ps):
            inside.update(range(start, start + len(ps)))
    function = sum(w in _FUNCTION_WORDS for i, w in enumerate(sent.words) if i not in inside)
    sent.prose = len(sent.words) >= MIN_WORDS and function >= MIN_FUNCTION_SHARE * len(sent.words)


def _find(stems: list[str], phrase: list[str]) -> list[int]:
    """Start positions of ``phrase`` (a list of stems) inside ``stems``."""
    n = len(phrase)
    return [i for i in range(len(stems) - n + 1) if stems[i : i + n] == phrase]


def _phrase_stems(phrase: str) -> list[str]:
    return [stem(w) for w in words(phrase)]


@dataclass
class ExplainResult:
    """The outcome of scoring one explanation.

    Attributes:
        hit: names of the concepts credited, in checklist order.
        missed: names of the concepts not credited, in checklist order.
        misconceptions: messages of the misconceptions found (un-negated).
        notes: other remarks (keyword salad, contradictions), in plain words.
    """

    hit: list[str]
    missed: list[str]
    misconceptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.hit) + len(self.missed)

    @property
    def score(self) -> float:
        """Fraction of concepts credited, 0..1 (misconceptions do not add or subtract)."""
        return len(self.hit) / self.total if self.total else 0.0

    @property
    def passed(self) -> bool:
        return not self.missed and not self.misconceptions

    def summary(self) -> str:
        """One paragraph, e.g. ``3/4 concepts. Missed: frozen base.``."""
        lines = [f"{len(self.hit)}/{self.total} concepts."]
        if self.hit:
            lines.append("Covered: " + ", ".join(self.hit) + ".")
        if self.missed:
            lines.append("Missed: " + ", ".join(self.missed) + ".")
        lines += [f"Misconception: {m}" for m in self.misconceptions]
        lines += self.notes
        return "\n".join(lines)


def score_explanation(text: str, concepts: list[dict], misconceptions: list[dict]) -> ExplainResult:
    """Score free text against a concept checklist.

    Args:
        text: the learner's answer.
        concepts: ``[{"name": str, "phrases": [str, ...]}, ...]``.
        misconceptions: ``[{"phrases": [str, ...], "message": str}, ...]``.

    Returns:
        An :class:`ExplainResult`; ``f"{len(hit)}/{total} concepts"`` is the headline.
    """
    sentences = _sentences(text)
    key_phrases = [
        _phrase_stems(p) for entry in (*concepts, *misconceptions) for p in entry["phrases"]
    ]
    for sent in sentences:
        _mark_prose(sent, key_phrases)
    notes: list[str] = []
    flagged: list[str] = []
    blocked: list[set[int]] = [set() for _ in sentences]  # word positions inside misconceptions

    for mis in misconceptions:
        found = False
        for s_idx, sent in enumerate(sentences):
            for phrase in mis["phrases"]:
                ps = _phrase_stems(phrase)
                for start in _find(sent.stems, ps):
                    if not _negated(sent.words, start):
                        blocked[s_idx].update(range(start, start + len(ps)))
                        found = True
        if found:
            flagged.append(mis["message"])

    # state[c][s]: how concept c appears in sentence s, a subset of {"stated", "negated"}.
    state: list[dict[int, set]] = []
    listy: set[int] = set()  # sentences with key phrases that do not read as prose
    for concept in concepts:
        found: dict[int, set] = {}
        for s_idx, sent in enumerate(sentences):
            for phrase in concept["phrases"]:
                ps = _phrase_stems(phrase)
                for start in _find(sent.stems, ps):
                    if blocked[s_idx] & set(range(start, start + len(ps))):
                        continue
                    if _negated(sent.words, start):
                        found.setdefault(s_idx, set()).add("negated")
                    elif sent.prose:
                        found.setdefault(s_idx, set()).add("stated")
                    else:
                        listy.add(s_idx)
        state.append(found)

    credited: list[set[int]] = [set() for _ in sentences]  # concepts each sentence earns
    for s_idx in range(len(sentences)):
        stated_here = [c for c, found in enumerate(state) if "stated" in found.get(s_idx, ())]
        credited[s_idx] = set(stated_here[:MAX_PER_SENTENCE])
        if len(stated_here) > MAX_PER_SENTENCE:
            notes.append(
                f"Sentence {s_idx + 1} packs {len(stated_here)} key ideas; only "
                f"{MAX_PER_SENTENCE} count there. Explain each in its own sentence."
            )

    hit, missed = [], []
    for c, concept in enumerate(concepts):
        stated = any(c in cred for cred in credited)
        negated = any("negated" in marks for marks in state[c].values())
        if stated and negated:
            notes.append(f"You both stated and denied '{concept['name']}', so it is not counted.")
        (hit if stated and not negated else missed).append(concept["name"])

    if sentences and not any(s.prose for s in sentences):
        notes.append(
            f"Write whole sentences (at least {MIN_WORDS} words each): a list of key terms "
            "does not explain how they fit together, so it is not scored."
        )
    elif listy:
        numbers = ", ".join(str(i + 1) for i in sorted(listy))
        notes.append(
            f"Sentence(s) {numbers} read like a list of terms (too short, or too few "
            "small words like 'the', 'is', 'by'), so their key terms are not counted."
        )
    return ExplainResult(hit=hit, missed=missed, misconceptions=flagged, notes=notes)


def _negated(sentence_words: list[str], start: int) -> bool:
    before = sentence_words[max(0, start - NEGATION_WINDOW) : start]
    return any(w in _NEGATIONS for w in before)
