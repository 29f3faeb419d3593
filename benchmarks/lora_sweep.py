"""Lesson 03's evidence: full fine-tuning against LoRA ranks and targets, over seeds.

The shipped model (``tiny-reverse``, pretrained to reverse words) is fine-tuned on ``shift``
with the same budget for every configuration: at most ``--steps`` AdamW steps of 32
examples, stopping early once an evaluation (every 25 steps, 100 examples) reaches 95 %.
The accuracy reported is exact match on 200 examples after training, drawn with their own
seed (``FINAL_SEED``): not the 100 words the in-training evaluation, and so the early stop,
looked at. LoRA uses ``alpha = 2 r``: the scaling ``alpha / r`` is 2 at every rank, but under
Adam ``|B A|`` grows about like ``sqrt(r)`` (lesson 02), so a larger rank also takes larger
effective steps (rank 16 about 4x rank 1). LoRA goes on

* ``q,v``: the query and value projections, as the LoRA paper did on GPT-3;
* ``all linear``: q, k, v, o and the three MLP projections, as the QLoRA paper did.

Sections (each over seeds 1..N; mean ± sd):

1. targets and ranks: every rank in ``--ranks`` on both target sets, plus full FT;
2. the verdicts: all linear against q,v at the same rank (accuracy; steps to 95 %) and at
   about the same parameter count (q,v at 4x the rank), each as the mean paired difference
   over seeds with its standard error (sd of the differences / sqrt(N)); a comparison
   counts as decided only where the difference exceeds t standard errors, t the two-sided
   95 % point of Student's t with N - 1 degrees of freedom (4.30 for 3 seeds: a paired
   t-test at p < 0.05; "2 SE" is the large-sample rule and too lenient for 3 seeds);
3. learning rate: full FT and LoRA (all linear, rank ``--lr-rank``) over ``--lrs``.

    python benchmarks/lora_sweep.py             # 3 seeds, the full grid (~15 min, 2 cores)
    python benchmarks/lora_sweep.py --quick     # smoke test: 1 seed, a few steps
    python benchmarks/lora_sweep.py --json out.json; ... --report out.json   # re-print

Wall times depend on the machine and its load, so they are printed as ratios to full FT.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import lora, models, train  # noqa: E402
from labkit.env import seed_everything  # noqa: E402

TARGETS = {
    "q,v": ["q_proj", "v_proj"],
    "all linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
FULL_LR = 1e-3
LORA_LR = 3e-3
STOP_AT = 0.95
EVAL_EVERY, EVAL_N, FINAL_N = 25, 100, 200
#: Seed of the final accuracy's sample. The in-training evaluation (which decides the early
#: stop) uses ``train.EVAL_SEED``; ``evaluate``'s default is that seed too, so the final
#: accuracy needs its own, or half of its 200 words would be the ones the stop was chosen on.
FINAL_SEED = 20_000


def run(base, task: str, targets: str | None, r: int, lr: float, steps: int, seed: int,
        threads: int = 2, eval_every: int | None = EVAL_EVERY) -> dict:
    """Fine-tune a copy of ``base`` once; ``targets=None`` is full fine-tuning.

    ``eval_every=None`` evaluates only at the end (no early stop): cheaper, for tests.

    Returns:
        dict with ``acc`` (exact match on FINAL_N examples of FINAL_SEED, in [0, 1]),
        ``steps`` (steps taken: fewer than the budget when it reached STOP_AT),
        ``trainable`` (parameters), ``wall_s`` (the training call, evaluations included)
        and ``model`` (the fine-tuned copy).
    """
    seed_everything(seed, threads=threads)
    model = copy.deepcopy(base)
    if targets is not None:
        lora.add_lora(model, TARGETS[targets], r=r, alpha=2 * r)
    trainable = lora.model_params(model).trainable
    h = train.train(model, task, steps=steps, lr=lr, batch_size=32, eval_every=eval_every,
                    eval_n=EVAL_N, seed=seed, stop_at=STOP_AT, progress=False)
    return {"acc": train.evaluate(model, task, n=FINAL_N, seed=FINAL_SEED), "steps": h.step[-1],
            "trainable": trainable, "wall_s": h.wall_s, "model": model}


def mean_sd(xs) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


#: Two-sided 95 % points of Student's t by degrees of freedom (n seeds: n - 1); beyond the
#: table the normal 1.96 is within 0.1 of it.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
       10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}


def t95(df: int) -> float:
    """The two-sided 95 % point of Student's t with ``df`` degrees of freedom: from T95, for
    an untabulated df the next smaller tabulated one's (slightly larger, so conservative);
    1.96 beyond 30."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96


def paired_verdict(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over paired seeds, its standard error, and whether it is decided.

    ``a[i]`` and ``b[i]`` share seed i (same batches, same evaluation words), so the
    differences are paired; SE = sd(a - b) / sqrt(n). Decided means |mean| > t * SE with
    t = :func:`t95` (n - 1): a paired t-test at p < 0.05 (4.30 SE for 3 seeds). With one
    seed there is no spread: the verdict is then "undecided".
    """
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = statistics.mean(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    t = t95(len(d) - 1) if len(d) > 1 else math.inf
    if m > t * se:
        verdict = "a better"
    elif m < -t * se:
        verdict = "b better"
    else:
        verdict = "undecided"
    return {"diff": m, "se": se, "t": t, "verdict": verdict}


def fmt(xs) -> str:
    m, s = mean_sd(xs)
    return f"{100 * m:5.1f} ± {100 * s:4.1f}"


def _verdict(a, b, name_a, name_b, key="acc", scale=100.0) -> dict:
    v = paired_verdict(a[key], b[key])
    v["verdict"] = {"a better": name_a, "b better": name_b}.get(v["verdict"], "undecided")
    v["diff"], v["se"] = v["diff"] * scale, v["se"] * scale
    return v


def verdicts(res: dict) -> dict:
    """The comparisons the lesson's recommendation rests on, from :func:`sweep`'s results.

    * same rank: all linear - q,v accuracy, and q,v - all linear steps to the 95 % mark
      (positive: all linear got there sooner; a run that never got there counts its budget);
    * same parameter count: q,v at rank 4k against all linear at rank k (all linear then
      has 8/7 of q,v's parameters in this model), q,v - all linear accuracy.
    """
    lo = res["lora"]
    ranks = sorted({int(k.split("r=")[1]) for k in lo})
    out = {"same rank, accuracy": {}, "same rank, steps": {}, "same parameters, accuracy": {}}
    for r in ranks:
        a, q = lo[f"all linear/r={r}"], lo[f"q,v/r={r}"]
        out["same rank, accuracy"][f"r={r}"] = _verdict(a, q, "all linear", "q,v")
        out["same rank, steps"][f"r={r}"] = _verdict(q, a, "all linear", "q,v", "steps", 1.0)
        if 4 * r in ranks:
            q4 = lo[f"q,v/r={4 * r}"]
            out["same parameters, accuracy"][f"q,v r={4 * r} vs all r={r}"] = _verdict(
                q4, a, "q,v", "all linear")
    return out


def report(res: dict) -> None:
    """Print the tables of :func:`sweep`'s results (also from a saved JSON)."""
    print(f"task {res['task']!r}; budget {res['steps']} steps x 32, early stop at "
          f"{res['stop_at']:.0%} (eval every {EVAL_EVERY} steps on {EVAL_N}); accuracy on "
          f"{FINAL_N} held-out examples (seed {FINAL_SEED}); seeds {res['seeds']}; "
          "LoRA alpha = 2r; time includes the evaluations")
    t_full = statistics.mean(res["full"]["wall_s"])
    print(f"\n1. targets and ranks (full FT lr {res['full_lr']:g}, LoRA lr {res['lora_lr']:g})")
    print(f"{'config':<22}{'trainable':>10}{'accuracy %':>16}{'steps to 95 %':>18}"
          f"{'time/full':>11}")

    def row(name, x):
        steps = "/".join(str(s) for s in x["steps"])
        ratio = statistics.mean(x["wall_s"]) / t_full
        print(f"{name:<22}{x['trainable'][0]:>10,}{fmt(x['acc']):>16}{steps:>18}"
              f"{ratio:>10.2f}x")

    row("full fine-tuning", res["full"])
    for key, x in res["lora"].items():
        t, r = key.split("/")
        row(f"LoRA {t} {r}", x)
    t = t95(len(res["seeds"]) - 1) if len(res["seeds"]) > 1 else math.inf
    print(f"\n2. verdicts (paired over seeds: mean difference ± its SE; decided if > {t:.2f} SE,"
          " a paired t-test at p < 0.05)")
    for what, rows in verdicts(res).items():
        unit = "steps" if "steps" in what else "points"
        print(f"  {what}:")
        for name, v in rows.items():
            z = f"{abs(v['diff']) / v['se']:4.1f} SE" if 0 < v["se"] < math.inf else "   no spread"
            print(f"    {name:<22} diff {v['diff']:+7.1f} {unit:<6} ± {v['se']:5.1f} "
                  f"({z}): {v['verdict']}")
    if "lr" in res:
        print(f"\n3. learning rate (same budget; LoRA all linear r={res.get('lr_rank', 16)})")
        lrs = list(res["lr"]["full"])
        for lr in lrs:
            print(f"  lr {float(lr):<8g} full {fmt(res['lr']['full'][lr]['acc'])}   "
                  f"LoRA {fmt(res['lr']['lora'][lr]['acc'])}")
        for name in ("full", "lora"):
            best = max(lrs, key=lambda lr, n=name: statistics.mean(res["lr"][n][lr]["acc"]))
            print(f"  best lr for {name}: {float(best):g}")


def sweep(ranks, lrs, seeds, steps=150, task="shift", lr_rank=16, threads=2) -> dict:
    """Run every configuration over ``seeds``; returns plain lists, ready for JSON."""
    base = models.load_pretrained().model
    res: dict = {"task": task, "steps": steps, "seeds": list(seeds), "stop_at": STOP_AT,
                 "full_lr": FULL_LR, "lora_lr": LORA_LR, "alpha": "2r", "lr_rank": lr_rank}

    def many(targets, r, lr):
        runs = [run(base, task, targets, r, lr, steps, s, threads) for s in seeds]
        for x in runs:
            del x["model"]
        return {k: [x[k] for x in runs] for k in runs[0]}

    res["full"] = many(None, 0, FULL_LR)
    res["lora"] = {f"{t}/r={r}": many(t, r, LORA_LR) for t in TARGETS for r in ranks}
    if lrs:
        res["lr"] = {"full": {str(lr): many(None, 0, lr) for lr in lrs},
                     "lora": {str(lr): many("all linear", lr_rank, lr) for lr in lrs}}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--task", default="shift")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--ranks", default="1,2,4,8,16")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2")
    p.add_argument("--lr-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-lr", action="store_true", help="skip the learning-rate section")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 5 steps")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the tables of a saved run instead of running")
    args = p.parse_args(argv)
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    if args.quick:
        args.seeds, args.steps, args.ranks, args.lrs = 1, 5, "1,4", "1e-3"
    ranks = [int(x) for x in args.ranks.split(",")]
    lrs = [] if args.no_lr else [float(x) for x in args.lrs.split(",")]
    res = sweep(ranks, lrs, range(1, args.seeds + 1), args.steps, args.task, args.lr_rank,
                args.threads)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
