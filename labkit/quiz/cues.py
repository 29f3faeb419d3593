"""Answer cues: can a test-wise learner pick the right option without knowing the topic?

Three cues are measured over every item with options (``choice``, ``scenario``,
``find_bug``), in the order the learner is shown them (:meth:`Item.options`):

* **length**: how often the right option is strictly the longest, and strictly the
  shortest, of its item (with four options, chance is 25 % each; a writer who explains the
  right answer and not the wrong ones makes it the longest);
* **length ratio**: the mean length of the right options over the mean length of the
  distractors, pooled over the bank (1.0: no length signal at all);
* **position**: how often the right option sits at each position of the shown order.

:func:`cue_report` measures them; :data:`LIMITS` are the bounds the bank must keep
(``tests/test_quiz_cues.py`` checks the shipped bank, and that a cueing bank fails). The
offending items are listed so that an author knows which to rewrite.

Imports: :mod:`labkit.quiz.bank` only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labkit.quiz.bank import Item

OPTION_KINDS = ("choice", "scenario", "find_bug")

#: Bounds the bank keeps: share of items whose right option is strictly the longest / the
#: shortest, the pooled length ratio (right / distractors), and the largest share of items
#: whose right option sits at any one shown position.
LIMITS = {"longest": 0.35, "shortest": 0.35, "ratio": (0.85, 1.15), "position": 0.40}


@dataclass
class CueReport:
    """What a test-wise learner could exploit in a set of items with options."""

    n: int
    longest: list[str] = field(default_factory=list)    # ids: right option strictly longest
    shortest: list[str] = field(default_factory=list)   # ids: right option strictly shortest
    ratio: float = 1.0                                  # mean right length / distractor length
    positions: dict[int, list[str]] = field(default_factory=dict)  # shown position -> ids

    def problems(self, limits: dict | None = None) -> list[str]:
        """One line per bound broken, naming the items to look at; empty when none is."""
        lim = {**LIMITS, **(limits or {})}
        out = []
        if self.n == 0:
            return out
        for cue in ("longest", "shortest"):
            ids = getattr(self, cue)
            if len(ids) / self.n > lim[cue]:
                out.append(f"the right option is strictly the {cue} in {len(ids)} of {self.n} "
                           f"items ({100 * len(ids) / self.n:.0f} %, at most "
                           f"{100 * lim[cue]:.0f} %): {', '.join(ids)}")
        lo, hi = lim["ratio"]
        if not lo <= self.ratio <= hi:
            out.append(f"right options are {self.ratio:.2f} x as long as distractors on "
                       f"average (allowed {lo}-{hi}): balance the lengths")
        for pos, ids in sorted(self.positions.items()):
            if len(ids) / self.n > lim["position"]:
                out.append(f"the right option is shown at position {pos + 1} in {len(ids)} of "
                           f"{self.n} items ({100 * len(ids) / self.n:.0f} %, at most "
                           f"{100 * lim['position']:.0f} %): {', '.join(ids)}")
        return out


def cue_report(items) -> CueReport:
    """Measure the answer cues of the items with options among ``items``."""
    rep = CueReport(0)
    right_len, wrong_len, n_right, n_wrong = 0, 0, 0, 0
    for it in items:
        if not isinstance(it, Item) or it.kind not in OPTION_KINDS or not it.choices:
            continue
        rep.n += 1
        shown = it.options()
        lengths = [len(c.text) for c in shown]
        k = next(i for i, c in enumerate(shown) if c.text == it.answer)
        others = lengths[:k] + lengths[k + 1:]
        if lengths[k] > max(others):
            rep.longest.append(it.id)
        if lengths[k] < min(others):
            rep.shortest.append(it.id)
        right_len, n_right = right_len + lengths[k], n_right + 1
        wrong_len, n_wrong = wrong_len + sum(others), n_wrong + len(others)
        rep.positions.setdefault(k, []).append(it.id)
    if n_right and n_wrong:
        rep.ratio = (right_len / n_right) / (wrong_len / n_wrong)
    return rep
