"""Reading a learner's explanation: sentences, clauses, lemmas, synonym classes, negation.

:func:`analyse` turns free text into :class:`Sentence` objects whose :class:`Token` objects
carry what the scorer matches on. The steps, in order:

1. **Notation.** Contractions are spelled out (``doesn't`` -> ``does not``, ``won't`` -> ``will
   not``), then the formulas of :data:`labkit.quiz.lexicon.REWRITES` become single tokens
   (``r(d + k)`` -> ``zzrdk``, ``4-bit`` -> ``zzfourbit``, ``B A`` -> ``zzprodba``).
2. **Sentences** end at ``.``, ``!``, ``?`` followed by a space, or at a line break. A sentence
   ending in ``?`` asserts nothing (``asserted`` is False): it earns no concept and shows no
   misconception.
3. **Words and lemmas.** Words are lower-cased; hyphens split them (``low-rank`` -> ``low
   rank``). Each word gets all its English lemmas from ``lemminflect`` (loaded on the first
   call, about 0.2 s; ``import labkit.quiz`` does not load it), e.g. ``kept`` -> ``keep``,
   ``matrices`` -> ``matrix``, ``frozen`` -> ``freeze``.
4. **Synonym classes.** The longest entry of :data:`labkit.quiz.lexicon.SYNONYMS` that
   matches at a word becomes one token whose ``classes`` name what it means ("kept
   unchanged" -> ``FROZEN``); a word that no longer entry covers gets every class of its own.
5. **Clauses.** A clause ends at ``;``, ``:``, brackets, dashes and arrows, and before
   ``but``, ``while``, ``because``, ``which``, ``so`` (not "so few"), ``instead``... A comma,
   ``and``, ``or`` or ``/`` ends it only when what follows has its own subject or verb ("it
   ...", "..., the adapters are ...", "and trains ..."); otherwise the list goes on ("does not
   add, remove or replace layers"). A label before a colon ("lr: higher than...") is not a
   clause of its own.
6. **Negation.** ``not``, ``no``, ``never``, ``without``, ``nor``, ``neither``, ``nothing``,
   ``instead of``, ``rather than``, ``than``, ``unlike``, ``compared with``, ``versus``
   negate every later token of their clause (two negations cancel) up to the next verb group
   ("a model that would not fit | can be run on one GPU"). "Not:" before a list
   negates the whole list. "People think ...", "a myth is ..." (unless "I" or "we" think it)
   negate the rest of the sentence. ``not only`` negates nothing, nor does ``than`` before a
   number ("less than 1 %").
7. **Prose.** A sentence of at least :data:`MIN_WORDS` words is *keyword salad* when fewer than
   :data:`MIN_RELATION_SHARE` of its words are function words, finite verbs ("updates",
   "is") or relation symbols (``=``, ``->``, ``+``, ``:``, a formula): a string of key terms
   states no claim, so it earns nothing. Shorter
   notes ("W frozen.") count, unless the whole answer is salad by the same measure.

Imports: labkit.quiz.lexicon; lemminflect when the first text is analysed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from labkit.quiz import lexicon as lx

MIN_WORDS = 5
MIN_RELATION_SHARE = 0.15

_CONTRACTIONS = [
    (r"\b(do|does|did|is|are|was|were|has|have|had|would|could|should|must)n'?t\b", r"\1 not"),
    (r"\bwon'?t\b", "will not"), (r"\bcan'?t\b", "can not"), (r"\bcannot\b", "can not"),
    (r"\btheres\b", "there is"), (r"n't\b", " not"),
    (r"\b(it|that|there|what|here)'s\b", r"\1 is"), (r"'re\b", " are"), (r"'ll\b", " will"),
    (r"'ve\b", " have"), (r"'s\b", ""),
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TOKEN = re.compile(
    r"zz[a-z]+|[a-z][a-z0-9_]*|\d+(?:[.,]\d+)*(?:e-?\d+)?|->|=>|<-|[=<>→←+*/×·@~≈:;,()\[\]—–&]",
    re.IGNORECASE,
)
_REWRITES = lx.compiled_rewrites()
_MATRIX_A = re.compile(r"\bA\b")
_A_VERBS = {"is", "has", "and", "starts", "start", "gets", "stays", "contributes", "holds",
            "projects", "maps", "random", "=", ":", ",", "(", "matrix", "was"}


@dataclass
class Token:
    """One word, number, symbol or synonym unit of a sentence."""

    text: str
    lemmas: frozenset = frozenset()
    classes: frozenset = frozenset()
    symbol: bool = False
    function: bool = False
    negated: bool = False
    clause: int = 0
    cue: bool = False


@dataclass
class Sentence:
    tokens: list[Token] = field(default_factory=list)
    asserted: bool = True
    prose: bool = True
    words: int = 0
    relations: int = 0


@lru_cache(maxsize=20000)
def lemmas(word: str) -> frozenset:
    """All English lemmas of a lower-case word (any part of speech), plus the word itself."""
    if word.startswith("zz") or not word.isalpha():
        return frozenset({word})
    import lemminflect  # deferred: about 0.2 s on first use, and only explain items need it

    out = {word}
    for forms in lemminflect.getAllLemmas(word).values():
        out.update(forms)
    if len(out) == 1 and len(word) > 3:
        for upos in ("NOUN", "VERB"):
            out.update(lemminflect.getAllLemmasOOV(word, upos).get(upos, ()))
    return frozenset(out)


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = re.sub(r"\b(e\.g|i\.e|etc|vs|approx|cf)\.", lambda m: m.group(1).replace(".", ""),
                  text, flags=re.IGNORECASE)  # abbreviations do not end a sentence
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    return text


def _rewrite(sentence: str) -> str:
    for pattern, repl in _REWRITES:
        sentence = pattern.sub(repl, sentence)

    def matrix_a(m: re.Match) -> str:  # capital A: the matrix, except a sentence's article
        before, after = sentence[: m.start()].strip(), sentence[m.end():].split()
        nxt = after[0].lower().strip(".,") if after else ""
        if before and not before.endswith((":", "-", ">")):
            return " zzmata "
        return " zzmata " if nxt in _A_VERBS or not nxt.isalpha() else m.group(0)

    return _MATRIX_A.sub(matrix_a, sentence)


def _raw_tokens(sentence: str) -> list[Token]:
    sentence = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", sentence)
    out = []
    for raw in _TOKEN.findall(sentence):
        text = raw.lower()
        symbol = not (text[0].isalnum())
        out.append(Token(text, lemmas(text) if not symbol else frozenset({text}), symbol=symbol))
    return out


def _entry_words(entry: str) -> tuple[str, ...]:
    """An entry's words as tokens read them; an upper-case word (a class) is kept as it is."""
    out: list[str] = []
    for word in entry.split():
        out += [word] if word.isupper() else [t.text for t in _raw_tokens(_rewrite(word))]
    return tuple(out)


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, set], dict[str, list[tuple[tuple[str, ...], str]]]]:
    """(lemma -> classes of one-word entries, first word -> [(multi-word entry, class)])."""
    single: dict[str, set] = {}
    multi: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for name, items in lx.entries().items():
        for entry in items:
            words = _entry_words(entry)
            if len(words) == 1:
                single.setdefault(words[0], set()).add(name)
            elif words:
                multi.setdefault(words[0], []).append((words, name))
    return single, multi


def _fits(tok: Token, word: str) -> bool:
    """An entry word fits a token: one of its lemmas, or (upper case) one of its classes."""
    return word in tok.classes if word.isupper() else word in tok.lemmas


def _match_entry(tokens: list[Token], i: int, words: tuple[str, ...]) -> int:
    """Tokens spanned when ``words`` matches at ``i`` (fillers may stand between), else 0."""
    j = i
    for n, word in enumerate(words):
        if n:
            skipped = 0
            while j < len(tokens) and not _fits(tokens[j], word) and skipped < 2 and (
                tokens[j].lemmas & lx.FILLERS
            ):
                j, skipped = j + 1, skipped + 1
        if j >= len(tokens) or not _fits(tokens[j], word):
            return 0
        j += 1
    return j - i


def _classify(tokens: list[Token]) -> list[Token]:
    """Give each token the classes of its one-word entries, then merge multi-word entries."""
    single, multi = _table()
    for tok in tokens:
        if not tok.symbol:
            tok.classes = frozenset(c for lemma in tok.lemmas for c in single.get(lemma, ()))
    out, i = [], 0
    while i < len(tokens):
        tok, best, classes = tokens[i], 1, set(tokens[i].classes)
        keys = tok.lemmas | tok.classes
        for words, name in (e for key in keys for e in multi.get(key, ())):
            span = _match_entry(tokens, i, words)
            if span > best:
                best, classes = span, {name}
            elif span == best > 1:
                classes.add(name)
        if best > 1:
            text = " ".join(t.text for t in tokens[i : i + best])
            merged = Token(text, frozenset({text}), frozenset(classes))
            merged.cue = bool(set(text.split()) & lx.NEGATIONS)  # "not updated": negates on
            out.append(merged)
        else:
            if tok.text in lx.SOFT_BREAKS or tok.text in lx.HARD_BREAKS:
                classes.add("BREAK")  # patterns may forbid a break between two slots
            out.append(Token(tok.text, tok.lemmas, frozenset(classes), tok.symbol))
        i += best
    for tok in out:
        tok.function = tok.text in lx.FUNCTION_WORDS and not tok.classes - {"ALL", "MUCH", "BREAK"}
    return out


def _cue_length(tokens: list[Token], i: int) -> int:
    """Length of the negation cue starting at ``i`` (0 if none)."""
    texts = [t.text for t in tokens[i : i + 3]]
    for n in (3, 2):
        if " ".join(texts[:n]) in lx.NEGATIONS:
            return n
    word = texts[0]
    if word == "not" and len(texts) > 1 and texts[1] in lx.NOT_NEGATING:
        return 0
    if word == "than" and len(tokens) > i + 1 and (tokens[i + 1].text[0].isdigit()
                                                   or "FRACTION" in tokens[i + 1].classes):
        return 0
    return 1 if word in lx.NEGATIONS else 0


def _new_clause_after(tokens: list[Token], j: int) -> bool:
    """After a comma/and/or at ``j - 1``: does a clause with its own subject or verb start?"""
    if tokens[j - 1].text == "," and j < len(tokens) and (
        tokens[j].text in lx.DETERMINERS
        or (tokens[j].text in {"and", "or"} and j + 1 < len(tokens)
            and tokens[j + 1].text in lx.DETERMINERS)
    ):
        return True
    while j < len(tokens) and tokens[j].text in {"then", "also", "only", "just", "still", "even",
                                                  "thus", "and", ","}:
        j += 1
    if j >= len(tokens):
        return False
    if tokens[j].text in lx.SUBJECTS:
        return True
    while j < len(tokens) and tokens[j].text not in lx.SOFT_BREAKS | lx.HARD_BREAKS:
        tok = tokens[j]
        if tok.text in lx.AUXILIARIES or (tok.text.endswith(("s", "ed")) and
                                          tok.text not in lx.VERBS and tok.lemmas & lx.VERBS):
            return True
        j += 1
    return False


def _clauses_and_negation(tokens: list[Token]) -> None:
    clause, negated, sticky, i, content = 0, False, False, 0, 0
    while i < len(tokens):
        tok, text = tokens[i], tokens[i].text
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if negated != sticky and content and text in lx.AUXILIARIES:
            negated = sticky  # a new verb group ("that would not fit *can* be run") ends it
        start_new = False
        if text in lx.HARD_BREAKS:
            label = [t for t in tokens[:i] if t.clause == clause and not t.symbol]
            if text == ":" and len(label) <= 2:
                sticky = sticky or negated  # "Not: A, B, C" negates the whole list
            else:
                start_new = True
        elif text in lx.CLAUSE_WORDS and not (
            (text == "instead" and nxt == "of") or (text == "rather" and nxt == "than")
            or (text == "so" and nxt in lx.SO_DEGREE)
        ):
            start_new = True
        elif text in lx.SOFT_BREAKS and _new_clause_after(tokens, i + 1):
            start_new = True
        if start_new:
            clause, negated = clause + 1, sticky
        cue = _cue_length(tokens, i)
        hedge = text in lx.HEDGES and (i == 0 or tokens[i - 1].text not in {"i", "we"}) and not (
            text in lx.HEDGE_VERBS and (i == 0 or nxt in {"of", "about"}))
        for t in tokens[i : i + max(cue, 1)]:
            t.clause, t.negated = clause, negated
        if cue:
            negated, content = not negated, 0
            i += cue
            continue
        if tok.cue:  # a synonym unit with its own "not" ("not updated") negates what follows
            negated, content = not negated, 0
        elif not (tok.function or tok.symbol):
            content += 1
        if hedge:
            sticky, negated = not sticky, not negated
        i += 1


def _finite_verb(tok: Token) -> bool:
    """"updates", "trained", "is": a verb form that makes a claim of a noun phrase."""
    return tok.text in lx.AUXILIARIES or (
        tok.text.endswith(("s", "ed")) and tok.text not in lx.VERBS and bool(tok.lemmas & lx.VERBS)
    )


def _measure(sentence: Sentence) -> None:
    words = [t for t in sentence.tokens if not t.symbol]
    sentence.words = sum(len(t.text.split()) for t in words)
    sentence.relations = sum(t.function or t.text in lx.FORMULAS or _finite_verb(t)
                             for t in words) + sum(
        t.text in lx.RELATION_SYMBOLS for t in sentence.tokens
    )
    sentence.prose = sentence.words < MIN_WORDS or (
        sentence.relations >= MIN_RELATION_SHARE * sentence.words
    )


def analyse(text: str) -> list[Sentence]:
    """Read ``text`` into sentences of classified, clause-numbered, negation-marked tokens."""
    sentences = []
    for part in _SENTENCE_END.split(_normalise(text)):
        if not part.strip():
            continue
        tokens = _classify(_raw_tokens(_rewrite(part)))
        if not tokens:
            continue
        _clauses_and_negation(tokens)
        sentence = Sentence(tokens, asserted=not part.rstrip().endswith("?"))
        _measure(sentence)
        sentences.append(sentence)
    words = sum(s.words for s in sentences)
    if words >= MIN_WORDS and sum(s.relations for s in sentences) < MIN_RELATION_SHARE * words:
        for s in sentences:  # the whole answer is a list of terms, however it is cut up
            s.prose = False
    return sentences


def words(text: str) -> list[str]:
    """The tokens of ``text`` as the scorer reads them (a debugging aid)."""
    return [t.text for s in analyse(text) for t in s.tokens]
