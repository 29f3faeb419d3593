"""The ledger: the LoRA variants' papers' claims, tested on the course's model (issue #21).

Lesson 11 builds DoRA, LoRA+, rsLoRA, PiSSA and LoftQ and shows that labkit computes what
PEFT computes. Whether they *help* is a separate question, and each paper makes a claim
about it. The ledger tests one claim per row, with rules fixed before anything ran, and
commits the results (``labkit/ledger/ledger.json``, with provenance); the producing script
is ``benchmarks/ledger.py``, and its ``--quick --check`` reruns the quick rows and compares
them with the committed ones.

Rules (fixed before the first run):

* at least 5 seeds (0-4); each row a *paired* comparison of a variant with its baseline at
  equal rank and equal steps, paired by seed (same torch seed before the adapters are
  made, same batch stream); the trainable parameters of both arms are reported (DoRA's are
  not equal: one magnitude per output of each wrapped layer more);
* the paired mean of ``variant - baseline`` and its 95 % t interval
  (:mod:`labkit.ledger.stats`); verdict "reproduced" when the interval excludes 0 and the
  mean has the paper's sign, "contradicted" when it excludes 0 with the opposite sign,
  "inconclusive" otherwise, with the reason (the interval contains 0, fewer than 2 pairs,
  zero spread, a value that is not finite).

Design (fixed before the first run; :data:`labkit.ledger.experiment.FULL`): the course's
pretrained model (``tiny-reverse``) fine-tuned on ``shift`` (lesson 03's task), adapters on
all 7 linear layers of each block, AdamW at lr 3e-3, batches of 32, one thread (1 thread is
deterministic and leaves the second core free). The budget, 100 steps, was chosen from the
time one run takes on the 2-core machine (the whole ledger within about 35 minutes), not
from any result. Held-out loss is the mean answer-token cross-entropy on 256 examples of
seed 30000; exact match is on 100 examples of seed 20000. The claims and their primary
metrics:

* **DoRA** (Liu et al., 2024): DoRA beats LoRA at equal rank, by more at low rank. Ranks
  1, 2, 4, 8, 16, alpha = 2r; held-out loss after 100 steps (paper's sign: DoRA lower).
  One more row: DoRA's gain (LoRA loss - DoRA loss) at r = 1 minus its gain at r = 16,
  per seed (paper's sign: positive).
* **LoRA+** (Hayou et al., 2024): ``B`` at ``ratio`` times ``A``'s learning rate converges
  faster (up to about 2x). Ratios 2, 4, 8, 16 against 1 (plain AdamW), r = 16, alpha = 32;
  steps to 90 % exact match, evaluated every 10 steps on 50 examples, at most 200 steps (a
  run that never gets there counts 200 and is flagged). Paper's sign: fewer steps.
* **rsLoRA** (Kalajdzievski, 2023): scaling by ``alpha / r`` collapses the update at high
  rank, ``alpha / sqrt(r)`` does not. Ranks 4, 8, 16, 32, 64, alpha = 16 in both arms (at
  r = 64: 0.25 against 2); held-out loss after 100 steps. Paper's sign: rsLoRA lower.
* **PiSSA (QPiSSA) and LoftQ** against QLoRA's zero init on a 4-bit base (NF4 + double
  quantization, blocks of 64, labkit's 4-bit layer, alpha = 2r): (a) the step-0 relative error
  ``||W - (Q + s B A)||_F / ||W||_F`` per target layer, at r = 4 and 16, LoftQ with 1 and
  5 alternating steps; deterministic, so the units are the 14 target layers, paired by
  layer; (b) held-out loss after 100 steps on the 4-bit base, r = 16, LoftQ with 1 step.
  Paper's sign: lower in both.

Use::

    from labkit import ledger
    print(ledger.table(ledger.load()["full"]["rows"]))      # the committed ledger
    committed, rerun = ledger.recompute_row("QPiSSA vs NF4, step-0 error, r=16")
    assert ledger.compare([committed], [rerun]) == []      # one row, recomputed live

Modules: ``stats`` (t quantile, paired interval, verdict, printed precision),
``experiment`` (the design, one run of each kind), ``claims`` (rows, their builders, the
plans), ``results`` (the JSON, provenance, the table, ``--check``'s comparison, recomputing
a committed row).

This ``__init__`` imports nothing heavy: names load on first use (:mod:`labkit._api`).
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".stats": ["DIGITS", "VERDICTS", "fmt", "betainc", "t_cdf", "t_quantile", "Paired",
               "paired", "verdict"],
    ".experiment": ["ALL_LINEAR", "Design", "FULL", "QUICK", "base_model", "heldout_loss",
                    "fixed_budget", "steps_to_target", "step0_errors"],
    ".claims": ["PAPERS", "Arm", "Row", "BUILDERS", "FULL_PLAN", "QUICK_PLAN", "build",
                "run_plan"],
    ".results": ["RESULTS_PATH", "SECTIONS", "load", "rows", "provenance", "save_section",
                 "compare", "table", "recompute_row"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
