"""LoRA, QLoRA or full fine-tuning of the pretrained model on several processes (DDP, or
FSDP2 with ``--fsdp``), through labkit.train unchanged.

    torchrun --standalone --nproc_per_node=2 scripts/ddp_train.py --out /tmp/ddp

Every rank builds the same model (pretrained base + LoRA on q_proj, v_proj; with ``--qlora``
the base's targeted layers are 4-bit NF4 first; with ``--full`` every weight trains), wraps it
in DistributedDataParallel (with ``--fsdp``: shards it with FSDP2) and trains on its shard of
each global batch. Rank 0 alone writes ``<out>/adapters.safetensors`` (the trainable tensors
by parameter name: the adapters, or every weight with ``--full``), ``<out>/adapter/`` (LoRA /
QLoRA: the adapter in PEFT's format, written by :func:`labkit.adapters.save_adapter`) and
``<out>/run.json`` (losses, bytes all-reduced per step, trainable parameter count, world
size). The same command runs on one process (``--nproc_per_node=1``): the reference a DDP
run must equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for rank 0's outputs")
    ap.add_argument("--task", default="shift")
    ap.add_argument("--word-len", type=int, default=6,
                    help="fixed word length (0: the task's mixed lengths, so shards hold "
                    "different numbers of answer tokens)")
    ap.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch (all ranks)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help="full fine-tuning (every weight trains) instead of LoRA")
    mode.add_argument("--qlora", action="store_true",
                      help="QLoRA: q_proj, v_proj stored in 4 bits (NF4), adapters on top")
    ap.add_argument("--fsdp", action="store_true",
                    help="shard the model with FSDP2 instead of replicating it with DDP "
                    "(no checkpoints, no byte count)")
    ap.add_argument("--timeout-s", type=float, default=20)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--checkpoint-every", type=int, default=None)
    ap.add_argument("--resume", action="store_true",
                    help="continue from --checkpoint-dir (rank 0 wrote it, every rank reads)")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from labkit import distributed as D
    from labkit import lora, models, qlora, train
    from labkit.data import get_task

    torch.set_num_threads(1)
    rank, world = D.init_from_env(timeout_s=args.timeout_s)
    try:
        task = get_task(args.task)
        if args.word_len:
            task = dataclasses.replace(task, min_len=args.word_len, max_len=args.word_len)
        task = D.shard_task(task, args.batch_size, rank, world)  # checks divisibility first
        device = D.local_device()  # cuda:LOCAL_RANK on a GPU machine, else the CPU
        model = models.load_pretrained().model.to(device)
        torch.manual_seed(args.seed)  # A's init; DDP also broadcasts rank 0's weights
        targets, r, alpha = ["q_proj", "v_proj"], 4, 8
        if args.full:
            model.requires_grad_(True)
        elif args.qlora:
            qlora.prepare_qlora(model, targets, r=r, alpha=alpha, dropout=args.dropout)
        else:
            lora.add_lora(model, targets, r=r, alpha=alpha, dropout=args.dropout)
        base_bytes = qlora.base_weight_bytes(model)  # before sharding: whole tensors
        if args.fsdp:  # each rank keeps 1/W of every weight, gathers a block to run it
            wrapped, counter = D.fully_shard_model(model, device), None
        else:  # a whole replica per rank; only the adapters join DDP's reducer
            wrapped = DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None)
            counter = D.CommCounter.attach(wrapped)
        start = 0
        if args.resume:
            ckpt = Path(args.checkpoint_dir) / train.CKPT_JSON
            start = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else 0
        h = train.train(wrapped, task, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                        eval_n=8, seed=args.seed, optimizer=args.optimizer,
                        progress=False, checkpoint_dir=args.checkpoint_dir,
                        checkpoint_every=args.checkpoint_every, resume=args.resume)
        trained = D.gather_trainable(wrapped)  # every rank: FSDP2 gathers collectively
        n_trainable = sum(t.numel() for t in trained.values())
        if not args.full:  # every rank calls it; rank 0 writes, the others wait
            lora.save_adapter(wrapped, Path(args.out) / "adapter")
        per_step = counter.bytes / (args.steps - start) if counter else None
        if D.is_main():
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            save_file(trained, str(out / "adapters.safetensors"))
            (out / "run.json").write_text(json.dumps({
                "world_size": world, "full": args.full, "qlora": args.qlora,
                "fsdp": args.fsdp, "loss": h.loss, "base_weight_bytes": base_bytes,
                "trainable_params": n_trainable, "resumed_from": start,
                "bytes_total": counter.bytes if counter else None,
                "hook_calls": counter.calls if counter else None,
                "bytes_per_step": per_step}))
            sent = (f"{per_step:.0f} bytes all-reduced per step" if counter
                    else "FSDP2: gathers and reduce-scatters not counted")
            D.log(f"world {world}: loss {h.loss[0]:.4f} -> {h.loss[-1]:.4f}, {sent} "
                  f"({n_trainable} trainable params)")
    finally:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
