"""The ledger's claims as rows: each paper's claim, the paired experiment, the verdict.

A row (:class:`Row`) compares a *variant* arm with a *baseline* arm on the same units
(seeds 0-4, or for the step-0 errors the 14 target layers) and records the setting, every
unit's value in both arms, the trainable parameters of each arm, the paired mean of
``variant - baseline`` with its 95 % interval (:mod:`labkit.ledger.stats`), the sign the
paper predicts, and the verdict with its reason.

One builder per kind of row (:data:`BUILDERS`); a row's ``claim`` and ``setting`` are the
builder's name and keyword arguments, so :func:`recompute_row` can run any committed row
again. :data:`FULL_PLAN` lists the ledger's rows, :data:`QUICK_PLAN` the quick ones.

Imports: :mod:`labkit.ledger.stats`, :mod:`labkit.ledger.experiment` (and so torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from labkit.ledger import experiment as X
from labkit.ledger.stats import fmt, paired, verdict

PAPERS = {
    "dora": "DoRA (Liu et al., 2024, arXiv:2402.09353): DoRA beats LoRA at equal rank, "
            "with larger gains at low rank",
    "loraplus": "LoRA+ (Hayou et al., 2024, arXiv:2402.12354): B's learning rate ratio "
                "times A's converges faster, up to about 2x",
    "rslora": "rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732): alpha / r collapses the "
              "update at high rank, alpha / sqrt(r) does not",
    "qlora_init": "PiSSA (Meng et al., 2024, arXiv:2404.02948, QPiSSA) and LoftQ (Li et al., "
                  "2023, arXiv:2310.08659): starting closer to W beats QLoRA's zero init",
}


@dataclass
class Arm:
    """One arm of a row: its label, one value per unit, and what else was measured."""

    label: str
    values: list[float]
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    """One ledger row (module docstring). ``mean``, ``ci`` and the verdict are of
    ``variant - baseline``; ``expected_sign`` is the sign of that difference the paper
    predicts (-1: the variant should be lower)."""

    name: str
    claim: str
    setting: dict
    metric: str
    units: str
    unit_labels: list
    variant: Arm
    baseline: Arm
    trainable: dict
    expected_sign: int
    paper: str
    n: int = 0
    mean: float | None = None
    sd: float | None = None
    ci: list = field(default_factory=lambda: [None, None])
    t: float | None = None
    verdict: str = ""
    reason: str = ""
    notes: list = field(default_factory=list)

    def __post_init__(self):
        p = paired(self.variant.values, self.baseline.values)
        self.n, self.mean, self.sd, self.t, self.ci = p.n, p.mean, p.sd, p.t, [p.lo, p.hi]
        self.verdict, self.reason = verdict(p, self.expected_sign)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        """A row from its JSON (statistics recomputed from the stored values)."""
        keep = {k: v for k, v in d.items()
                if k not in ("n", "mean", "sd", "ci", "t", "verdict", "reason")}
        keep["variant"], keep["baseline"] = Arm(**d["variant"]), Arm(**d["baseline"])
        return cls(**keep)


def _seeds(d: X.Design) -> list[str]:
    return [f"seed {s}" for s in d.seeds]


def _fixed_arms(d: X.Design, arm: dict) -> tuple[list[float], list[float], int]:
    runs = [X.fixed_budget(d, arm, s) for s in d.seeds]
    return [r["loss"] for r in runs], [r["exact_match"] for r in runs], runs[0]["trainable"]


def _loss_row(d: X.Design, name: str, claim: str, setting: dict, variant: tuple[str, dict],
              baseline: tuple[str, dict], notes: list[str]) -> Row:
    """A fixed-budget row on held-out loss (lower is better: expected sign -1)."""
    (vl, va), (bl, ba) = variant, baseline
    v_loss, v_em, v_n = _fixed_arms(d, va)
    b_loss, b_em, b_n = _fixed_arms(d, ba)
    return Row(name, claim, setting, f"held-out loss after {d.steps} steps (lower is better)",
               "seeds", _seeds(d), _loss_arm(vl, v_loss, v_em), _loss_arm(bl, b_loss, b_em),
               {vl: v_n, bl: b_n}, -1, PAPERS[claim], notes=notes)


def _loss_arm(label: str, loss: list[float], em: list[float]) -> Arm:
    return Arm(label, loss, {"exact_match": em})


def dora(d: X.Design, r: int) -> Row:
    """DoRA against LoRA at rank ``r``, alpha = 2r, held-out loss."""
    a = {"kind": "lora", "r": r, "alpha": 2 * r}
    return _loss_row(d, f"DoRA vs LoRA, r={r}", "dora", {"r": r},
                     (f"DoRA r={r}", {**a, "use_dora": True}), (f"LoRA r={r}", a),
                     ["DoRA trains one magnitude per output of each wrapped layer more"])


def dora_gain(d: X.Design, low: int, high: int) -> Row:
    """DoRA's gain (LoRA loss - DoRA loss, per seed) at rank ``low`` minus at ``high``;
    the paper: larger at low rank (expected sign +1)."""
    gains, ems, counts = {}, {}, {}
    for r in (low, high):
        a = {"kind": "lora", "r": r, "alpha": 2 * r}
        lo_loss, lo_em, lo_n = _fixed_arms(d, a)
        do_loss, do_em, do_n = _fixed_arms(d, {**a, "use_dora": True})
        gains[r] = [x - y for x, y in zip(lo_loss, do_loss, strict=True)]
        ems[r] = [x - y for x, y in zip(do_em, lo_em, strict=True)]
        counts.update({f"LoRA r={r}": lo_n, f"DoRA r={r}": do_n})
    return Row(f"DoRA's gain, r={low} vs r={high}", "dora_gain", {"low": low, "high": high},
               "DoRA's gain in held-out loss (LoRA - DoRA) at the low rank minus at the high "
               f"rank, after {d.steps} steps", "seeds", _seeds(d),
               Arm(f"gain r={low}", gains[low], {"exact_match_gain": ems[low]}),
               Arm(f"gain r={high}", gains[high], {"exact_match_gain": ems[high]}),
               counts, 1, PAPERS["dora"],
               notes=["a gain is measured in absolute loss; where LoRA's loss is already "
                      "small (high rank) the room for a gain is small too"])


def rslora(d: X.Design, r: int, alpha: float = 16) -> Row:
    """rsLoRA (scaling alpha / sqrt(r)) against LoRA (alpha / r), same alpha, held-out loss."""
    a = {"kind": "lora", "r": r, "alpha": alpha}
    return _loss_row(d, f"rsLoRA vs LoRA, r={r}", "rslora", {"r": r, "alpha": alpha},
                     (f"rsLoRA r={r}", {**a, "use_rslora": True}), (f"LoRA r={r}", a),
                     [f"alpha = {alpha:g} in both arms: scaling {alpha / r ** 0.5:.3g} "
                      f"(alpha / sqrt r) against {alpha / r:.3g} (alpha / r)"])


def loraplus(d: X.Design, ratio: float, r: int = 16) -> Row:
    """LoRA+ at ``ratio`` against plain AdamW (ratio 1): steps to ``d.target`` exact match
    (lower is better); a run that never gets there counts ``d.cap`` and is flagged."""
    a = {"kind": "lora", "r": r, "alpha": 2 * r}
    v = [X.steps_to_target(d, a, ratio, s) for s in d.seeds]
    b = [X.steps_to_target(d, a, 1, s) for s in d.seeds]
    notes = [f"evaluated every {d.eval_every} steps on {d.eval_n} examples; steps are "
             "known to that resolution"]
    for label, runs in ((f"ratio {ratio:g}", v), ("ratio 1", b)):
        missed = [s for s, x in zip(d.seeds, runs, strict=True) if not x["reached"]]
        if missed:
            notes.append(f"{label}: seeds {missed} never reached {d.target:.0%} within "
                         f"{d.cap} steps and count as {d.cap} (censored: the true gap may "
                         "be larger)")
    speed = [y["steps"] / x["steps"] for x, y in zip(v, b, strict=True)]
    notes.append(f"speed-up (ratio-1 steps / LoRA+ steps) per seed: "
                 f"{', '.join(fmt(s) for s in speed)}")

    def arm(label, runs):
        return Arm(label, [x["steps"] for x in runs],
                   {"reached": [x["reached"] for x in runs],
                    "final_acc": [x["final_acc"] for x in runs]})

    return Row(f"LoRA+ ratio {ratio:g} vs 1, r={r}", "loraplus", {"ratio": ratio, "r": r},
               f"steps to {d.target:.0%} exact match (lower is better; cap {d.cap})", "seeds",
               _seeds(d), arm(f"LoRA+ ratio {ratio:g}", v), arm("LoRA (ratio 1)", b),
               {f"LoRA+ ratio {ratio:g}": v[0]["trainable"], "LoRA (ratio 1)": b[0]["trainable"]},
               -1, PAPERS["loraplus"], notes=notes)


_INIT_LABEL = {"pissa": "QPiSSA", "loftq": "LoftQ", "default": "QLoRA zero init"}


def _qarm(init: str, r: int, loftq_iter: int) -> dict:
    return {"kind": "qlora", "r": r, "alpha": 2 * r, "init": init, "loftq_iter": loftq_iter}


def _qlabel(init: str, loftq_iter: int) -> str:
    return _INIT_LABEL[init] + (f" (T={loftq_iter})" if init == "loftq" else "")


def step0(d: X.Design, init: str, r: int = 16, loftq_iter: int = 1) -> Row:
    """The step-0 relative error ``||W - (Q + s B A)||_F / ||W||_F`` of ``init`` against
    QLoRA's zero init (``B A = 0``), paired by layer; lower is better."""
    v, v_n = X.step0_errors(d, _qarm(init, r, loftq_iter))
    b, b_n = X.step0_errors(d, _qarm("default", r, 1))
    label = _qlabel(init, loftq_iter)
    return Row(f"{label} vs NF4, step-0 error, r={r}", "qlora_init",
               {"init": init, "r": r, "loftq_iter": loftq_iter},
               "relative error ||W - (Q + s B A)||_F / ||W||_F at step 0 (lower is better)",
               "layers", list(v), Arm(label, list(v.values())),
               Arm("QLoRA zero init", [b[k] for k in v]), {label: v_n, "QLoRA zero init": b_n},
               -1, PAPERS["qlora_init"],
               notes=["deterministic (no seed reaches it); the units are the target layers, "
                      "paired by layer: the interval speaks of layers like these",
                      f"NF4 + double quantization, blocks of 64 ({d.backend}'s 4-bit layer); "
                      "alpha = 2r" + (f"; LoftQ alternates T = {loftq_iter} time(s)"
                                      if init == "loftq" else "")])


def qlora_train(d: X.Design, init: str, r: int = 16, loftq_iter: int = 1) -> Row:
    """QPiSSA or LoftQ against QLoRA's zero init on the 4-bit base: held-out loss after
    the fixed budget."""
    label = _qlabel(init, loftq_iter)
    return _loss_row(d, f"{label} vs QLoRA zero init, 4-bit base, r={r}", "qlora_init",
                     {"init": init, "r": r, "loftq_iter": loftq_iter, "train": True},
                     (label, _qarm(init, r, loftq_iter)),
                     ("QLoRA zero init", _qarm("default", r, 1)),
                     [f"NF4 + double quantization, blocks of 64 ({d.backend}'s 4-bit layer); "
                      "alpha = 2r" + ("; LoftQ alternates once" if init == "loftq" else "")])


def _qlora_init(d: X.Design, init: str, r: int = 16, loftq_iter: int = 1,
                train: bool = False) -> Row:
    return (qlora_train if train else step0)(d, init, r, loftq_iter)


#: Row builders by a row's ``claim``; ``builder(design, **row.setting)`` recomputes it.
BUILDERS: dict[str, Callable[..., Row]] = {
    "dora": dora, "dora_gain": dora_gain, "rslora": rslora, "loraplus": loraplus,
    "qlora_init": _qlora_init,
}

#: The ledger's rows, in order: (claim, setting). Fixed before the first run.
FULL_PLAN: list[tuple[str, dict]] = (
    [("qlora_init", {"init": i, "r": r, "loftq_iter": t})
     for r in (4, 16) for i, t in (("pissa", 1), ("loftq", 1), ("loftq", 5))]
    + [("dora", {"r": r}) for r in (1, 2, 4, 8, 16)]
    + [("dora_gain", {"low": 1, "high": 16})]
    + [("rslora", {"r": r, "alpha": 16}) for r in (4, 8, 16, 32, 64)]
    + [("loraplus", {"ratio": q, "r": 16}) for q in (2, 4, 8, 16)]
    + [("qlora_init", {"init": i, "r": 16, "loftq_iter": 1, "train": True})
       for i in ("pissa", "loftq")]
)
#: The quick rows (``benchmarks/ledger.py --quick``): a step-0 row and a 2-seed DoRA row.
QUICK_PLAN: list[tuple[str, dict]] = [
    ("qlora_init", {"init": "pissa", "r": 4, "loftq_iter": 1}),
    ("dora", {"r": 4}),
]


def build(claim: str, setting: dict, design: X.Design) -> Row:
    """Run one row: ``BUILDERS[claim](design, **setting)``."""
    if claim not in BUILDERS:
        raise ValueError(f"unknown claim {claim!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[claim](design, **setting)


def run_plan(plan: list[tuple[str, dict]], design: X.Design,
             on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Run every row of ``plan``; ``on_row`` sees each row as it is done."""
    rows = []
    for claim, setting in plan:
        rows.append(build(claim, setting, design))
        if on_row is not None:
            on_row(rows[-1])
    return rows
