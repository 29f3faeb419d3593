"""Pretrain the course's tiny LLaMA-style model and write its checkpoint and card.

    python scripts/pretrain.py           # writes labkit/checkpoints/tiny-reverse.{json,safetensors}
    python scripts/pretrain.py --check   # re-run into a temp dir, compare with the card

The run is deterministic: seeded model init and batch stream, a fixed torch thread count
(recorded in the card). The same seed and threads reproduce the card's metrics and, on the
same torch build, the same weights (sha256). Takes about a minute on a 2-core laptop CPU.
"""

from __future__ import annotations

import os

# Threads that wait passively instead of spinning: on a busy machine spinning OpenMP
# threads slow every step down several-fold. Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import labkit  # noqa: E402
from labkit import data, models, train  # noqa: E402
from labkit.env import DEFAULT_THREADS, seed_everything  # noqa: E402

EVAL_N = 500


def pretrain(args: argparse.Namespace, out_dir: Path) -> dict:
    seed_everything(args.seed, threads=args.threads)
    cfg = models.get_config(args.config)
    model = models.build(cfg)
    t0 = time.perf_counter()
    hist = train.train(model, args.task, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed, warmup_steps=args.warmup, schedule="cosine",
                       optimizer="adamw", weight_decay=0.0, grad_clip=1.0, eval_n=200,
                       progress=not args.quiet)
    wall = time.perf_counter() - t0
    metrics = {
        "eval_n": EVAL_N,
        "eval_seed": train.EVAL_SEED,
        "pretrain_acc": train.evaluate(model, args.task, n=EVAL_N),
        "finetune_acc": {t: train.evaluate(model, t, n=EVAL_N) for t in data.FINETUNE_TASKS},
        "final_loss": round(sum(hist.loss[-20:]) / 20, 6),  # mean of the last 20 steps
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    st_path = out_dir / f"{args.name}.safetensors"
    digest = models.save_pretrained(model, st_path)
    card = {
        "name": args.name,
        "description": "Tiny LLaMA-style decoder pretrained to reverse lowercase words "
                       "(R:hello=olleh). Fine-tuning tasks: " + ", ".join(
                           f"{t} ({data.TASKS[t].description})" for t in data.FINETUNE_TASKS),
        "config": cfg.to_dict(),
        "n_params": model.num_params(),
        "pretrain_task": args.task,
        "finetune_tasks": list(data.FINETUNE_TASKS),
        "task_format": {t.name: t.prompt("hello") + t.answer("hello") for t in data.TASKS.values()},
        "word_lengths": [data.TASKS[args.task].min_len, data.TASKS[args.task].max_len],
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup,
        "schedule": "cosine",
        "optimizer": "adamw (betas 0.9/0.999, weight_decay 0), grad clip 1.0",
        "threads": args.threads,
        "metrics": metrics,
        "sha256": digest,
        "size_bytes": st_path.stat().st_size,
        "versions": {"labkit": labkit.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "wall_s": round(wall, 1),
        "command": "python scripts/pretrain.py " + " ".join(sys.argv[1:]),
    }
    card_path = out_dir / f"{args.name}.json"
    if card_path.exists():  # same weights: keep the measured acceptance table
        old = json.loads(card_path.read_text())
        if old.get("sha256") == digest and "acceptance" in old:
            card["acceptance"] = old["acceptance"]
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default=models.DEFAULT_PRETRAINED)
    p.add_argument("--config", default="tiny")
    p.add_argument("--task", default=data.PRETRAIN_TASK)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--out-dir", type=Path, default=models.CHECKPOINT_DIR)
    p.add_argument("--check", action="store_true",
                   help="train into a temp dir and compare metrics with the committed card")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    if not args.check:
        card = pretrain(args, args.out_dir)
        print(json.dumps({k: card[k] for k in ("name", "metrics", "sha256", "wall_s")}, indent=2))
        return 0

    ref_path = args.out_dir / f"{args.name}.json"
    if not ref_path.exists():
        print(f"no card {ref_path} to check against; run without --check first")
        return 2
    ref = json.loads(ref_path.read_text())
    for key in ("steps", "seed", "batch_size", "lr", "warmup_steps", "threads"):
        mine = {"warmup_steps": args.warmup}.get(key, getattr(args, key, None))
        if mine != ref[key]:
            print(f"note: {key}={mine} here, the card used {ref[key]}")
    with tempfile.TemporaryDirectory() as tmp:
        card = pretrain(args, Path(tmp))
    same_metrics = card["metrics"] == ref["metrics"]
    print(f"metrics   {'SAME' if same_metrics else 'DIFFERENT'}: {card['metrics']}")
    if not same_metrics:
        print(f"card says          {ref['metrics']}")
    print(f"sha256    {'SAME' if card['sha256'] == ref['sha256'] else 'different (bitwise)'}")
    return 0 if same_metrics else 1


if __name__ == "__main__":
    sys.exit(main())
