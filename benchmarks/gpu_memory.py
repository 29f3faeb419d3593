"""GPU memory of a QLoRA training step, one fresh process per configuration, phase by phase.

One fresh Python process per row (the caching allocator and CUDA context start clean), each
row: build the model in bf16 on the GPU (random init), ``prepare_qlora`` on the seven block
linears (NF4 + double quantization, bitsandbytes back end), then three full steps of labkit's
loop order: forward under bf16 autocast, loss, ``zero_grad(set_to_none=True)``, backward,
optimizer step. Recorded per row, besides the table's resident and peak bytes:

* the build's own peak (``models.build`` must not hold a float32 copy on the device);
* the peak and the allocated bytes at the end of each phase of each step (forward, backward,
  optimizer step): the step's peak is the largest phase peak;
* the device memory in use outside PyTorch's allocator (CUDA context, cuBLAS workspaces, paged
  optimizer state): ``total - free`` from ``cudaMemGetInfo`` less ``memory_reserved``;
* with ``--snapshot-dir``, the allocator's event history of the third step (alloc and free with
  Python stacks) as a gzip pickle, to attribute each byte of the peak to a line of code.

``--gap`` compares, on gpu_check's 283M model (r=8, batch 32 x 20, no checkpointing), the
phases and the saved tensors of labkit's QLoRA against PEFT + bitsandbytes, built the same way.

Each row prints the measured peak beside :func:`labkit.memory.estimate_peak`'s.

    python benchmarks/gpu_memory.py --rows tinyllama --out results.json   # on a CUDA GPU
    python benchmarks/gpu_memory.py --dry-run                             # CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from labkit import _deps, memory, models, qlora, train  # noqa: E402

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MiB = 2**20

# (config, r, batch, seq, optimizer, checkpointing): the table's rows, TinyLlama first
ROWS = {
    "tinyllama": [("tinyllama-1.1b", 64, 1, 512, "adamw", True),
                  ("tinyllama-1.1b", 64, 1, 512, "adamw", False),
                  ("tinyllama-1.1b", 64, 1, 512, "paged_adamw", True)],
    "7b": [("llama-2-7b", 64, 1, 512, "adamw", True)],
    # shapes the model was not written from: tied embeddings and a 128k vocabulary, longer
    # sequences, batches above 1, other ranks
    "extra": [("llama-3.2-1b", 16, 4, 256, "adamw", False),
              ("tinyllama-1.1b", 8, 8, 128, "adamw", True),
              ("mistral-7b", 16, 2, 1024, "paged_adamw", True),
              ("llama-3-8b", 32, 1, 2048, "adamw", True)],
    "7b-all": [("llama-2-7b", 64, 1, 512, "adamw", True),
               ("llama-2-7b", 64, 1, 512, "adamw", False),
               ("llama-2-7b", 64, 1, 512, "paged_adamw", True)],
}


def _device_outside_allocator() -> int:
    """Bytes in use on the device that PyTorch's caching allocator does not hold."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


class Phases:
    """Per-phase peaks: ``mark(tag)`` closes a phase, recording its peak and what is left."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows = cuda, []

    def mark(self, tag: str) -> None:
        if not self.cuda:
            self.rows.append({"phase": tag})
            return
        torch.cuda.synchronize()
        self.rows.append({"phase": tag, "peak": torch.cuda.max_memory_allocated(),
                          "end": torch.cuda.memory_allocated()})
        torch.cuda.reset_peak_memory_stats()


def saved_tensors(model, ids) -> list:
    """(shape, dtype, bytes) of every distinct storage autograd saves in one forward + loss."""
    excl = memory.model_storages(model)
    with memory.SavedTensorCounter(exclude=excl) as c, torch.autocast(
            ids.device.type, dtype=torch.bfloat16, enabled=ids.device.type == "cuda"):
        logits = model(ids[:, :-1])
        train.lm_loss(logits, ids[:, 1:])
    return [(list(s), str(d).removeprefix("torch."), n) for s, d, n in c.records]


def run_steps(m, opt, ids, cuda: bool, steps: int = 3, snapshot: Path | None = None,
              whole: bool = False) -> dict:
    """The table's three steps, in labkit's loop order, with a phase mark after each part.

    ``snapshot``: record the allocator's history of the last step (``whole``: of every step,
    so that what the first step leaves behind is attributed too)."""
    ph = Phases(cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else 0
    for step in range(steps):
        if snapshot is not None and cuda and step == (0 if whole else steps - 1):
            torch.cuda.memory._record_memory_history(context="all", stacks="python",
                                                     max_entries=400_000)
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = m(ids[:, :-1])
        loss = train.lm_loss(logits, ids[:, 1:])
        ph.mark(f"{step}:forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ph.mark(f"{step}:backward")
        opt.step()
        ph.mark(f"{step}:step")
    out = {"resident": resident, "phases": ph.rows, "loss": loss.item()}
    if cuda:
        out["peak"] = max(r["peak"] for r in ph.rows)
        out["outside_allocator"] = _device_outside_allocator()
        out["reserved_peak"] = torch.cuda.max_memory_reserved()
    if snapshot is not None and cuda:
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        with gzip.open(snapshot, "wb") as f:
            pickle.dump({"device_traces": snap["device_traces"],
                         "segments_total": sum(s["total_size"] for s in snap["segments"])}, f)
    return out


def one_row(name: str, r: int, B: int, T: int, optimizer: str, ckpt: bool, dry: bool,
            snapshot: Path | None, whole: bool = False) -> dict:
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    cfg = models.get_config(name)
    if dry:
        cfg = models.get_config("tiny")
        B, T = 2, 16
    out = {"config": name, "r": r, "batch": B, "seq_len": T, "optimizer": optimizer,
           "checkpointing": ckpt}
    if cuda:
        torch.cuda.init()
        torch.cuda.synchronize()
        out["context_before_build"] = _device_outside_allocator()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    m = models.build(cfg, device=device, dtype=torch.bfloat16)
    if cuda:
        torch.cuda.synchronize()
        out["build_peak"] = torch.cuda.max_memory_allocated()
        out["build_end"] = torch.cuda.memory_allocated()
    qlora.prepare_qlora(m, ALL7, r=r, alpha=16, backend="auto", compute_dtype=torch.bfloat16,
                        gradient_checkpointing=ckpt)
    opt = train.make_optimizer(m, optimizer, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    out.update(run_steps(m, opt, ids, cuda, snapshot=snapshot, whole=whole))
    est = memory.estimate(cfg, "qlora", batch=B, seq_len=T, compute_dtype="bf16",
                          optimizer=optimizer, r=r, targets=ALL7, gradient_checkpointing=ckpt,
                          autocast=True)
    out["estimate_at_run"] = est.total  # what the step holds, summed (not a peak)
    out["saved_bytes_estimate_at_run"] = est.activations
    pk = memory.estimate_peak(cfg, "qlora", B, T, optimizer=optimizer, r=r, targets=ALL7,
                              gradient_checkpointing=ckpt)
    out["peak_estimate"], out["peak_moment"] = pk.peak, pk.moment
    return out


def gap(dry: bool, snapshot_dir: Path | None, whole: bool = False) -> dict:
    """labkit vs PEFT + bitsandbytes on gpu_check's 283M model: phases and saved tensors."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_check  # noqa: PLC0415  (the same builders and adapter init as the GPU check)

    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    base = gpu_check.make_base("big", device, dry)
    init = gpu_check.peft_init(base)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4 if dry else 32, 21), generator=g).to(device)
    res = {}
    for c in ("labkit", "peft"):
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated() if cuda else 0
        m = gpu_check.build(c, base, init, torch.bfloat16 if cuda else torch.float32, False)
        opt = train.make_optimizer(m, "paged_adamw", lr=1e-3)
        m.train()
        snap = snapshot_dir / f"gap_{c}.pickle.gz" if snapshot_dir and cuda else None
        row = run_steps(m, opt, ids, cuda, snapshot=snap, whole=whole)
        row["model_bytes"] = row["resident"] - before
        row["before"] = before
        rec = saved_tensors(m, ids)
        row["saved"] = rec
        row["saved_total"] = sum(n for *_, n in rec)
        res[c] = row
        del m, opt
    return res


def _fmt(b) -> str:
    return f"{b / MiB:9.1f}" if isinstance(b, int) else f"{'-':>9}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", choices=sorted(ROWS), nargs="*", default=["tinyllama"])
    ap.add_argument("--gap", action="store_true", help="the 283M labkit vs PEFT comparison")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--out", type=Path, help="write every result as JSON here")
    ap.add_argument("--snapshot-dir", type=Path,
                    help="save allocator histories here (TinyLlama rows and --gap only)")
    ap.add_argument("--no-row-snapshots", action="store_true", help="snapshots for --gap only")
    ap.add_argument("--whole-history", action="store_true",
                    help="record every step's allocations, not only the last step's")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a row spec, run in this process
    args = ap.parse_args(argv)
    _deps.import_bnb()

    if args.one:
        spec = json.loads(args.one)
        snap = spec.pop("snapshot", None)
        snap = Path(snap) if snap else None
        print(json.dumps(one_row(**spec, dry=args.dry_run, snapshot=snap,
                                 whole=args.whole_history)))
        return 0

    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "rows": [], "gap": None}
    for group in args.rows:
        for name, r, B, T, optimizer, ckpt in ROWS[group]:
            snap = None
            if args.snapshot_dir and name == "tinyllama-1.1b" and not args.no_row_snapshots:
                args.snapshot_dir.mkdir(parents=True, exist_ok=True)
                snap = str(args.snapshot_dir / f"{name}_{optimizer}_{'ckpt' if ckpt else 'noc'}"
                               ".pickle.gz")
            spec = {"name": name, "r": r, "B": B, "T": T, "optimizer": optimizer, "ckpt": ckpt,
                    "snapshot": snap}
            cmd = [sys.executable, __file__, "--one", json.dumps(spec)]
            cmd += ["--dry-run"] if args.dry_run else []
            cmd += ["--whole-history"] if args.whole_history else []
            p = subprocess.run(cmd, capture_output=True, text=True)  # a fresh process per row
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(p.stdout.strip().splitlines()[-1])
            results["rows"].append(row)
            print(f"{name:<15} r={r:<3} {B}x{T:<4} {optimizer:<12} ckpt={ckpt!s:<5} resident"
                  f"{_fmt(row.get('resident'))} peak{_fmt(row.get('peak'))} est. peak"
                  f"{_fmt(row['peak_estimate'])} build peak{_fmt(row.get('build_peak'))}"
                  f" outside{_fmt(row.get('outside_allocator'))}", flush=True)
    if args.gap:
        results["gap"] = gap(args.dry_run, args.snapshot_dir, args.whole_history)
        for c, row in results["gap"].items():
            print(f"283M {c:<7} model{_fmt(row['model_bytes'])} peak{_fmt(row.get('peak'))} "
                  f"saved{_fmt(row['saved_total'])} ({len(row['saved'])} tensors)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
