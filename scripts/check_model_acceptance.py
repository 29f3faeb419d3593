"""Measure the shipped model's acceptance numbers and print them as a table.

    python scripts/check_model_acceptance.py            # 3 seeds, full fine-tuning
    python scripts/check_model_acceptance.py --lora     # plus a hand-written LoRA check
    python scripts/check_model_acceptance.py --lora --write-card   # store it in the card
    python scripts/check_model_acceptance.py --seeds 1 --quick

What it measures, per fine-tuning task (seeds 1..N, fine-tuning budget: ``--steps`` AdamW
steps of ``--batch-size`` at ``--lr``, the same for every model; mean ± sd over seeds):

* the pretrained model before fine-tuning (exact match, 500 examples);
* full fine-tuning of the pretrained model for the budget: wall time of the training call,
  then accuracy on 500 examples of the task and of the pretraining task (forgetting);
* a randomly initialised model of the same size, trained with the same budget;
* with ``--lora``: rank-r adapters (W x + B A x * alpha/r, alpha = 2r, B zero-initialised,
  base frozen) on q,v and on all linear layers, on the pretrained and on a random model,
  ``--lora-steps`` steps at ``--lora-lr``. The adapter here is a dozen lines written for this
  check; ``labkit.lora`` is the course's real one.

Timings depend on the machine and its load; the accuracies are seeded and reproducible.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/pretrain.py

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from labkit import models, train  # noqa: E402
from labkit.env import seed_everything  # noqa: E402

EVAL_N = 500
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _LoRA(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.A = torch.nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def add_lora(model: torch.nn.Module, r: int, targets) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if name in targets:
                setattr(mod, name, _LoRA(child, r, alpha=2 * r))
    return model


def fmt(xs) -> str:
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:6.1%} ± {s:4.1%}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--lora-steps", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 20 steps")
    p.add_argument("--json", type=str, default=None, help="also write the results here")
    p.add_argument("--write-card", action="store_true",
                   help="store the summary in the checkpoint's card under 'acceptance'")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.lora_steps = 1, 10, 10

    base, _, card = models.load_pretrained()
    pre_task = card["pretrain_task"]
    seed_everything(0, threads=args.threads)
    results: dict = {"budget": {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size},
                     "threads": args.threads, "seeds": args.seeds}
    results["pretrained"] = {t: train.evaluate(base, t, n=EVAL_N)
                             for t in [pre_task, *card["finetune_tasks"]]}
    print(f"pretrained model ({EVAL_N} examples): "
          + ", ".join(f"{t} {a:.1%}" for t, a in results["pretrained"].items()))

    common = dict(steps=args.steps, batch_size=args.batch_size, progress=False)
    for task in card["finetune_tasks"]:
        rows = {k: [] for k in ("full_acc", "full_forget", "full_time", "full_cpu",
                                "rand_acc", "lora_qv", "lora_all", "lora_qv_rand")}
        for seed in range(1, args.seeds + 1):
            seed_everything(seed, threads=args.threads)
            m = copy.deepcopy(base)
            cpu0 = time.process_time()
            h = train.train(m, task, lr=args.lr, seed=seed, eval_n=20, **common)
            rows["full_cpu"].append(round(time.process_time() - cpu0, 2))
            rows["full_time"].append(round(h.wall_s, 2))
            rows["full_acc"].append(train.evaluate(m, task, n=EVAL_N))
            rows["full_forget"].append(train.evaluate(m, pre_task, n=EVAL_N))

            seed_everything(seed, threads=args.threads)
            r = models.build(base.config)
            train.train(r, task, lr=args.lr, seed=seed, eval_n=20, **common)
            rows["rand_acc"].append(train.evaluate(r, task, n=EVAL_N))

            if args.lora:
                for key, targets, model_fn in (
                        ("lora_qv", ("q_proj", "v_proj"), lambda: copy.deepcopy(base)),
                        ("lora_all", ALL_LINEAR, lambda: copy.deepcopy(base)),
                        ("lora_qv_rand", ("q_proj", "v_proj"),
                         lambda: models.build(base.config))):
                    seed_everything(seed, threads=args.threads)
                    lm = add_lora(model_fn(), args.lora_rank, targets)
                    train.train(lm, task, lr=args.lora_lr, seed=seed, eval_n=20,
                                steps=args.lora_steps, batch_size=args.batch_size,
                                progress=False)
                    rows[key].append(train.evaluate(lm, task, n=EVAL_N))
        results[task] = rows
        print(f"\n== fine-tuning task {task!r}: {args.seeds} seeds, budget {args.steps} steps "
              f"x {args.batch_size} at lr {args.lr} ==")
        print(f"full FT of pretrained:                  acc {fmt(rows['full_acc'])}, "
              f"wall {rows['full_time']} s (CPU {rows['full_cpu']} s, all threads)")
        print(f"  {pre_task} after full FT (forgetting): {fmt(rows['full_forget'])} "
              f"(was {results['pretrained'][pre_task]:.1%})")
        print(f"random init, same budget:               acc {fmt(rows['rand_acc'])}")
        if args.lora:
            r, n = args.lora_rank, args.lora_steps
            print(f"LoRA r={r}, {n} steps at lr {args.lora_lr}:")
            print(f"  q,v on pretrained:                    acc {fmt(rows['lora_qv'])}")
            print(f"  all linear on pretrained:             acc {fmt(rows['lora_all'])}")
            print(f"  q,v on random init:                   acc {fmt(rows['lora_qv_rand'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.write_card:
        write_card(results)
    return 0


def summarize(results: dict) -> dict:
    """Per task: mean and sd over seeds of each measured list (accuracies, seconds)."""
    out = {k: v for k, v in results.items() if not (isinstance(v, dict) and "full_acc" in v)}
    for task, rows in results.items():
        if isinstance(rows, dict) and "full_acc" in rows:
            out[task] = {k: {"mean": round(statistics.mean(v), 4),
                             "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0}
                         for k, v in rows.items() if v}
    out["note"] = ("full_time: wall seconds of the full fine-tuning call, full_cpu: its CPU "
                   "seconds summed over threads; both depend on the machine and its load. "
                   "Accuracies are seeded (seeds 1..N) and reproducible.")
    return out


def write_card(results: dict, name: str = models.DEFAULT_PRETRAINED) -> None:
    path = models.CHECKPOINT_DIR / f"{name}.json"
    card = json.loads(path.read_text())
    card["acceptance"] = summarize(results)
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote the summary into {path}")


if __name__ == "__main__":
    sys.exit(main())
