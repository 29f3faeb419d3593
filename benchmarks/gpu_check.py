"""GPU check: QLoRA fine-tuning with labkit and with PEFT + bitsandbytes, same settings.

For two models, the shipped pretrained one and a bigger labkit model (about 280M parameters,
random init, built straight on the GPU in bf16), each contender quantizes the same seven
linear targets to NF4 with double quantization, adds rank-8 adapters starting from the same
values, and trains the same batches with paged AdamW in bf16 compute. Printed per model:

* step time, labkit over PEFT (wall clock, CUDA-synchronised): all contenders built side
  by side and stepped in interleaved rounds (A B C, C B A, ...), the median per-round ratio;
* peak ``torch.cuda.max_memory_allocated`` while one contender trains alone, less what was
  allocated before its model was built (the unquantized base it is copied from stays on the
  GPU throughout), beside labkit's estimate of the same step, ``labkit.memory.estimate``
  with ``autocast=True`` (4-bit base with its quantization state, float layers in the
  compute dtype, fp32 adapters, their gradients, paged AdamW's moments and the activations
  autograd saves). CUDA context, kernel workspaces, backward's temporaries and allocator
  caching are not in the estimate;
* correctness: the two contenders' losses step by step (they run the same maths in bf16,
  so they agree to bf16 rounding), and no NaN. For the small model labkit's reference
  4-bit back end (pure PyTorch, on the GPU too) runs as a third contender.

First, labkit's 4-bit quantizer against bitsandbytes' on the same device (on a GPU that is
bitsandbytes' CUDA kernels, which the test suite never runs; it checks labkit's CUDA rules
against a recording, ``scripts/record_bnb_cuda.py``): NF4 and FP4, three dtypes, with and
without double quantization, several block sizes. Printed: how many 4-bit codes differ and
whether a reciprocal one ulp off explains each difference (the kernel's reciprocal is
approximate), whether the scales and the dequantized values are identical.

Then the scaling-out path of lesson 09 on the GPUs: ``scripts/ddp_train.py --qlora`` under
``torchrun``, one process per GPU (at most 2) with ``nccl``. Checked: it runs, the bytes
all-reduced per step are 4 x the adapter parameters, the loss falls, nothing is NaN. (In
the dry run: one process with gloo on the CPU.)

Last, lesson 10's standard stack against labkit: the bigger model exported as a transformers
directory, fine-tuned once with transformers + PEFT as lesson 10's GPU cell does it and once
with labkit from the same directory and starting adapter; losses, peak memory and step time
side by side (``gpu_standard_stack.py``, whose docstring says what is compared and how).
Then labkit's LoftQ against PEFT's own ``loftq_init``, which needs CUDA, on every target
layer of the course model (``gpu_loftq.py``: the 4-bit values, the starting errors).

    python benchmarks/gpu_check.py             # on a CUDA GPU: well under 5 minutes
    python benchmarks/gpu_check.py --dry-run   # anywhere, tiny sizes, seconds (a test runs it)

Only torch, bitsandbytes, peft, transformers and labkit are needed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from labkit import _deps, distributed, models, qlora, train  # noqa: E402
from labkit import lora as L  # noqa: E402
from labkit.data import get_task  # noqa: E402
from labkit.env import pick_device, seed_everything  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402  (interleaved timing, shared with the CPU benchmarks)
import gpu_loftq  # noqa: E402  (labkit's LoftQ against PEFT's own, layer by layer)
import gpu_standard_stack  # noqa: E402  (the transformers + PEFT path on an exported model)
from _gpu_setup import TARGETS, MiB, R, big_config, estimate_bytes  # noqa: E402

warnings.filterwarnings("ignore", message="`is_gradient_checkpointing`", category=FutureWarning)

def make_base(name: str, device: torch.device, dry: bool) -> torch.nn.Module:
    if name == "pretrained":
        return models.load_pretrained(device=device).model
    seed_everything(0)
    dtype = torch.bfloat16 if device.type == "cuda" else None  # what one loads to quantize
    return models.build(big_config(dry), device=device, dtype=dtype)


def peft_init(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Adapter values both sides start from: PEFT's initialisation, seeded."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=R, lora_alpha=2 * R,
                                                        target_modules=TARGETS))
    return {k.removeprefix("base_model.model."): v.detach().clone()
            for k, v in pm.state_dict().items() if ".lora_" in k}


def build(contender: str, base: torch.nn.Module, init: dict, compute_dtype, checkpointing):
    if contender == "peft":
        from peft import LoraConfig, get_peft_model

        m = copy.deepcopy(base)
        qlora.quantize_model(m, TARGETS, backend="bnb", compute_dtype=compute_dtype)
        m.is_loaded_in_4bit = True  # as transformers marks it: PEFT uses its bnb layers
        if checkpointing:
            models.set_gradient_checkpointing(m)
        m = get_peft_model(m, LoraConfig(r=R, lora_alpha=2 * R, target_modules=TARGETS))
        qlora.disable_cpu_inference_repack(m)
        with torch.no_grad():
            state = dict(m.named_parameters())
            for k, v in init.items():
                state["base_model.model." + k].copy_(v)
        return m
    m = copy.deepcopy(base)
    backend = "labkit" if contender == "labkit-ref" else "auto"
    qlora.prepare_qlora(m, TARGETS, r=R, alpha=2 * R, backend=backend,
                        compute_dtype=compute_dtype, gradient_checkpointing=checkpointing)
    with torch.no_grad():
        for k, p in L.get_adapter_params(m).items():
            p.copy_(init[k])
    return m


def train_step(model, opt, ids, labels, dtype) -> torch.Tensor:
    """One QLoRA step: forward under autocast (bf16 on a GPU), backward, optimizer step."""
    with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(ids)
    loss = train.lm_loss(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def run(model, batches, device, dtype, checkpointing=False, before: int = 0) -> dict:
    """Train ``model`` on ``batches``: losses, and the peak memory over the steps less
    ``before``, the bytes allocated before the model was built."""
    opt = train.make_optimizer(model, "paged_adamw", lr=1e-3)
    model.train()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses = [train_step(model, opt, ids, labels, dtype).item() for ids, labels in batches]
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    est = estimate_bytes(model, tuple(batches[0][0].shape), dtype, checkpointing)
    return {"losses": losses, "peak": peak, "estimate": est}


def step_times(models_by_name: dict, batches, dtype, reps: int) -> tuple[dict, dict]:
    """Each contender's step time, interleaved (A B C, C B A, ...) so that a slow spell of the
    machine hits all alike: median seconds per step, and the median per-round ratio to PEFT.
    """
    steppers = {}
    for name, model in models_by_name.items():
        opt = train.make_optimizer(model, "paged_adamw", lr=1e-3)
        stream = itertools.cycle(batches)

        def step(model=model, opt=opt, stream=stream):
            train_step(model, opt, *next(stream), dtype)
            if batches[0][0].device.type == "cuda":
                torch.cuda.synchronize()
        step()  # warm-up: kernels, allocator, optimizer state
        steppers[name] = step
    wall, _ = _bench.interleave(steppers, reps)
    return ({c: statistics.median(t) for c, t in wall.items()},
            {c: _bench.ratio(c, "peft", wall) for c in wall})


def quant_agreement(device: torch.device, dry: bool) -> bool:
    """labkit.quant vs bitsandbytes.functional on ``device``, code for code; prints one line
    per (format, dtype, double quant) and returns whether they agree.

    labkit follows the rules of the kernel bitsandbytes runs on ``device``. On a GPU that
    kernel uses an approximate reciprocal, so a code may differ where a reciprocal one ulp
    away explains it (``labkit.quant._cuda_codes_within_one_ulp``); that is counted apart.
    """
    from labkit import quant as Q

    F = _deps.import_bnb().functional
    import torch._dynamo

    # bnb's CPU fallback is torch.compile'd: compiling per shape takes seconds; eager is the
    # same arithmetic (see tests/test_quant.py). The CUDA path has its own kernels.
    torch._dynamo.config.disable = device.type == "cpu"
    shapes = [(33, 70)] if dry else [(4096, 1024), (1000, 333), (7,)]
    blocksizes = (64,) if dry else (64, 128, 256, 1024, 4096)
    g = torch.Generator().manual_seed(0)
    agree = True
    for quant_type in ("nf4", "fp4"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for dq in (False, True):
                n_codes = n_diff = n_unexplained = 0
                scales_same = deq_same = True
                for shape in shapes:
                    for bs in blocksizes:
                        x = (torch.randn(shape, generator=g) * 0.02).to(device, dtype)
                        pb, sb = F.quantize_4bit(x, blocksize=bs, quant_type=quant_type,
                                                 compress_statistics=dq)
                        pl, sl = Q.quantize_4bit(x, bs, quant_type, dq)
                        n = x.numel()
                        cb = Q.unpack_nibbles(pb.reshape(-1), n)
                        same = cb == Q.unpack_nibbles(pl.reshape(-1), n)
                        n_codes += n
                        n_diff += int((~same).sum())
                        if device.type == "cuda" and not same.all():
                            ok_blocks = Q._cuda_codes_within_one_ulp(x, bs, quant_type, cb)
                            n_unexplained += int((~ok_blocks).sum())
                        elif not same.all():
                            n_unexplained += 1
                        scales_same &= torch.equal(sb.absmax, sl.absmax)
                        if dq:
                            scales_same &= torch.equal(sb.state2.absmax, sl.nested_absmax)
                            scales_same &= torch.equal(sb.offset, sl.offset)
                        db = F.dequantize_4bit(pb, sb).reshape(-1)
                        dl = Q.dequantize_4bit(pl, sl).reshape(-1)
                        deq_same &= torch.equal(db[same[:n]], dl[same[:n]])
                good = n_unexplained == 0 and scales_same and deq_same
                agree &= good
                print(f"quantize_4bit on {device.type}, {quant_type} {str(dtype)[6:]:<8} "
                      f"{'dq   ' if dq else 'plain'}: {n_diff:,} of {n_codes:,} codes differ "
                      f"({n_unexplained} blocks not explained by a one-ulp reciprocal); scales "
                      f"identical: {scales_same}; dequantized identical where codes are: "
                      f"{deq_same}")
    torch._dynamo.config.disable = False
    return agree


def ddp_check(dry: bool) -> bool:
    """Lesson 09's DDP script with a 4-bit base on this machine's GPUs (nccl); prints one
    line and returns whether the run is sound."""
    nproc = 1 if dry else min(2, torch.cuda.device_count())
    steps = 2 if dry else 20
    with tempfile.TemporaryDirectory() as out:
        r = distributed.launch(distributed.DDP_TRAIN, "--out", out, "--qlora", "--steps", steps,
                               "--batch-size", 16, "--word-len", 0, nproc=nproc, timeout=300,
                               check=False)
        if r.returncode:
            print(f"DDP (torchrun, {nproc} process(es)): FAILED\n{r.stderr[-3000:]}")
            return False
        run = json.loads((Path(out) / "run.json").read_text())
    loss = run["loss"]
    exact = run["bytes_per_step"] == 4 * run["trainable_params"]
    finite = all(math.isfinite(v) for v in loss)
    falls = dry or loss[-1] < loss[0]
    backend = "gloo" if dry else "nccl"
    print(f"DDP (torchrun, {backend}, {nproc} process(es)): QLoRA {steps} steps, loss "
          f"{loss[0]:.3f} -> {loss[-1]:.3f}; {run['bytes_per_step']:,.0f} bytes all-reduced per "
          f"step = 4 x {run['trainable_params']:,} adapter params: {exact}; "
          f"ok: {'yes' if exact and finite and falls else 'NO'}")
    return exact and finite and falls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on whatever device is here (the CPU in the test suite)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per contender")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--memory", action="store_true",
                    help="also gpu_memory.py's rows: TinyLlama's three and one 7B, a fresh "
                         "process each, measured peak beside labkit.memory.estimate_peak")
    ap.add_argument("--quant-only", action="store_true",
                    help="only compare labkit's quantizer with bitsandbytes'")
    args = ap.parse_args(argv)

    device = torch.device("cpu") if args.dry_run else pick_device()
    if device.type != "cuda" and not args.dry_run:
        print("no CUDA GPU here: run with --dry-run for the CPU smoke test")
        return 2
    seed_everything(0)
    _deps.import_bnb()  # peft imports bitsandbytes; keep its import log quiet
    compute_dtype = qlora.resolve_compute_dtype(None, device)
    dtype = compute_dtype  # autocast dtype of the rest of the model
    steps = args.steps or (2 if args.dry_run else 20)
    warm = 0 if args.dry_run else 3
    batch = args.batch or (4 if args.dry_run else 32)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
              f"compute {compute_dtype}")
    else:
        print(f"device: {device} (dry run), compute {compute_dtype}")
    ok = quant_agreement(device, args.dry_run)
    if args.quant_only:
        print("quantizers agree" if ok else "QUANTIZERS DISAGREE")
        return 0 if ok else 1
    task = get_task("shift")
    stream = random.Random(0)
    data = [tuple(t.to(device) for t in task.batch(batch, rng=stream))
            for _ in range(max(warm, steps))]

    rows = []
    for model_name in ("pretrained", "big"):
        base = make_base(model_name, device, args.dry_run)
        n_params = sum(p.numel() for p in base.parameters())
        init = peft_init(base)
        contenders = ["labkit", "peft"] + (["labkit-ref"] if model_name == "pretrained" else [])
        res = {}
        for c in contenders:  # one at a time: losses and peak memory
            if warm:  # warm-up (kernels, allocator, paging) on a throwaway copy
                run(build(c, base, init, compute_dtype, args.checkpointing), data[:warm],
                    device, dtype)
                gc.collect()  # the throwaway copy must be gone before the baseline is read
            before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            m = build(c, base, init, compute_dtype, args.checkpointing)
            res[c] = run(m, data[:steps], device, dtype, args.checkpointing, before)
            del m
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # all together: step times, interleaved
        timed = {c: build(c, base, init, compute_dtype, args.checkpointing) for c in contenders}
        times, ratios = step_times(timed, data[:steps], dtype, reps=steps)
        del base, timed
        gc.collect()
        ref = res["peft"]
        for c, r in res.items():
            gap = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"], strict=True))
            scale = max(abs(b) for b in ref["losses"])
            finite = all(math.isfinite(v) for v in r["losses"])
            # bf16 rounds to ~3 significant digits; losses of the same maths stay within 2 %
            agree = gap <= 0.02 * scale if dtype != torch.float32 else gap <= 1e-4 * scale
            ok &= finite and agree
            rows.append((model_name, n_params, c, 1e3 * times[c], ratios[c], r["peak"],
                         r["estimate"], r["losses"][-1], gap, finite and agree))

    print(f"QLoRA NF4 + double quant, r={R} on {', '.join(TARGETS)}; paged AdamW; batch "
          f"{batch}; losses and peak memory over {steps} steps after {warm} warm-up steps, one "
          f"contender at a time; step time: median of {steps} interleaved rounds, '/ PEFT' the "
          f"median per-round ratio")
    head = (f"{'model':<10} {'params':>12} {'contender':<11} {'step ms':>8} {'/ PEFT':>7} "
            f"{'peak MiB':>8} {'est. MiB':>8} {'last loss':>9} {'max|dloss|':>10}  ok")
    print(head)
    print("-" * len(head))
    for name, n, c, ms, rat, peak, est, loss, gap, good in rows:
        peak_s = f"{peak / MiB:8.1f}" if peak is not None else f"{'n/a':>8}"
        print(f"{name:<10} {n:>12,d} {c:<11} {ms:>8.1f} {rat:>7.2f} {peak_s} {est / MiB:>8.1f} "
              f"{loss:>9.4f} {gap:>10.2e}  {'yes' if good else 'NO'}")
    print("est. MiB: labkit.memory.estimate of the same step (weights, quantization state, "
          "grads, optimizer, saved activations; no CUDA context or allocator cache)")
    ok &= ddp_check(args.dry_run)
    if args.memory:  # the measured table's protocol, one fresh process per row
        import gpu_memory  # noqa: PLC0415  (only this option needs it)

        rows = ["tinyllama"] if args.dry_run else ["tinyllama", "7b"]
        ok &= gpu_memory.main(["--rows", *rows] + (["--dry-run"] if args.dry_run else [])) == 0
    # lesson 10's transformers + PEFT path against labkit's on the bigger model, exported
    ok &= gpu_standard_stack.compare(big_config(args.dry_run), device, compute_dtype, steps, batch)
    ok &= gpu_loftq.compare(device)
    if args.dry_run:
        print("dry run OK" if ok else "dry run FAILED")
    else:
        print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
