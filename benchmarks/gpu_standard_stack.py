"""GPU check, standard stack: lesson 10's transformers + PEFT QLoRA fine-tune beside labkit's,
on a bigger labkit model exported as a transformers directory.

The model is gpu_check's bigger one (``_gpu_setup.big_config``: about 280M parameters,
seeded random init, built in bf16 on the GPU), written with ``labkit.hf_export.export_hf``
and the course tokenizer. Both contenders load that directory:

* the standard stack, as lesson 10's GPU cell writes it: ``AutoModelForCausalLM`` in 4 bits
  (``BitsAndBytesConfig``: NF4, double quantization, bf16 compute, ``device_map={"": 0}``),
  ``prepare_model_for_kbit_training`` with gradient checkpointing (non-reentrant),
  ``get_peft_model`` with ``LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")``,
  bitsandbytes' ``PagedAdamW``; PEFT saves the adapter it starts from;
* labkit: ``hf_export.from_hf`` on the same directory, onto the GPU, ``qlora.prepare_qlora``
  on the same seven linears (same r, alpha, gradient checkpointing, bf16 compute), PEFT's
  starting adapter loaded into it, labkit's ``paged_adamw`` with the same settings.

Both then train on the same conversations of lesson 10's chat task, drawn from the stream
``labkit.train.train`` draws from (PEFT's side renders them with the tokenizer's chat
template, ``standard_stack.chat_batch``; labkit's encodes them itself), under bf16 autocast
with gradient clipping at 1.0. The batches are made before the clock starts. Printed per
contender: the median step time (CUDA-synchronised; the contenders run one after the other,
so the ratio is rough: gpu_check's own table interleaves them), the peak
``max_memory_allocated`` over the steps less what was allocated before the model was loaded,
beside labkit's ``memory.estimate`` of the step, the first and last loss, and the largest
loss difference to PEFT over the steps that are judged. ok: every loss finite, and the
judged steps' losses within ``TOLERANCE`` times the largest PEFT loss.

Which steps are judged, and how closely. In float32 the two compute the same numbers up to
the order of sums, so every step must agree within 1e-4 (lesson 10 shows 150 steps). In bf16
they do not run quite the same maths: ``prepare_model_for_kbit_training`` casts the layers
that stay in 16 bits (embedding, norms, head) to float32, so PEFT's residual stream is
float32 where labkit's is bf16 (and transformers' attention is PyTorch's fused SDPA where
labkit's is written out). The first losses differ by bf16 roundings, and training amplifies
the difference. On the CPU in bf16 (this script's lr, r and 20 steps, batch 16, random init)
the two stayed within 0.0007 of each other over all 20 steps with 4 layers of hidden 256, and
over the first 10 with 8 layers of hidden 384, which then separated (0.37 apart at step 15,
where PEFT's loss spiked). So in bf16 only the first ``JUDGED_STEPS`` steps are judged,
within 1 % of the largest PEFT loss: 70 times the gap measured there (1.4e-4 relative), and
below what a real mismatch gives (with 4 layers, labkit's learning rate doubled moved steps
2-5 by 2.6 %; a 10 % error, 0.4 %, would pass here, and the float32 dry run catches it).
Later steps are printed, not judged. The float32 residual stream also makes the block inputs
that PEFT's checkpointing saves float32, twice labkit's bytes; labkit's estimate, of labkit's
step, leaves that out.

In the dry run (the CPU, float32, tiny sizes, 2 steps) it is lesson 10's CPU path:
bitsandbytes quantizes on the CPU, ``qlora.disable_cpu_inference_repack``, eager attention,
torch's AdamW on both sides (paging needs CUDA). Peak memory is n/a on the CPU.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _gpu_setup import TARGETS, MiB, R, estimate_bytes

from labkit import _deps, hf_export, models, qlora, train
from labkit import lora as L
from labkit import standard_stack as S
from labkit.chat import chat_task
from labkit.env import seed_everything

LR, SEED, CLIP = 3e-3, 0, 1.0  # lesson 10's learning rate, seed and gradient clipping
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.01, torch.float16: 0.01}  # see docstring
JUDGED_STEPS = 5  # in 16 bits: the steps before rounding differences can grow (docstring)
PEFT, LABKIT = "transformers + PEFT", "labkit"


def allocated(device: torch.device) -> int:
    """Bytes the CUDA allocator holds once the garbage is gone (0 on the CPU, where no peak
    is read, and a full collection would take seconds of the dry run)."""
    if device.type != "cuda":
        return 0
    gc.collect()  # a model that is gone may still sit in a reference cycle
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def train_steps(model, params, opt, batches, loss_of, dtype, before: int) -> dict:
    """The training loop of lesson 10's GPU cell, one step per batch: the losses, the median
    step time in ms and the peak allocated memory over the steps less ``before``."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 GPUs
    model.train()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, seconds = [], []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if cuda:  # the kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    return {"losses": losses, "ms": 1e3 * statistics.median(seconds), "peak": peak}


def standard_stack(model_dir: Path, start_dir: Path, batches, dtype) -> dict:
    """Lesson 10's GPU cell on ``model_dir`` (on the CPU: its CPU cells' loading)."""
    transformers, peft = _deps.import_hf()
    device = batches[0]["input_ids"].device
    cuda = device.type == "cuda"
    before = allocated(device)
    four_bit = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    # the GPU cell: straight onto GPU 0 with transformers' default attention (SDPA); the CPU
    # cells (load_4bit): eager attention, the maths labkit writes out
    where = {"device_map": {"": 0}} if cuda else {"attn_implementation": "eager"}
    with _deps.hf_progress_bars(False):  # its "Loading weights" bar: stderr clutter
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=four_bit, dtype=dtype, **where)
    qlora.disable_cpu_inference_repack(model)  # lesson 05's CPU trap; a no-op for CUDA layers
    with warnings.catch_warnings():  # peft calls a method transformers renamed; not ours
        warnings.filterwarnings("ignore", "`gradient_checkpointing_enable`", FutureWarning)
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(SEED)  # A starts random, B at zero
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=R, lora_alpha=2 * R, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM"))
    model.save_pretrained(start_dir)  # labkit starts from the same values
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = _deps.import_bnb().optim.PagedAdamW if cuda else torch.optim.AdamW
    opt = adamw(params, lr=LR, weight_decay=0.0)
    return train_steps(model, params, opt, batches, lambda b: model(**b).loss, dtype, before)


def labkit_path(model_dir: Path, start_dir: Path, batches, dtype) -> dict:
    """The same fine-tune with labkit, from the same directory and starting adapter."""
    device = batches[0][0].device
    before = allocated(device)
    model = hf_export.from_hf(model_dir).to(device)
    qlora.prepare_qlora(model, TARGETS, r=R, alpha=2 * R, compute_dtype=dtype,
                        gradient_checkpointing=True)
    # PEFT's names hold transformers' module paths: renamed for labkit's flat model
    start = hf_export.adapter_to_labkit(start_dir, start_dir.with_name("start-for-labkit"))
    L.load_adapter(model, start, is_trainable=True)
    opt = train.make_optimizer(model, "paged_adamw" if device.type == "cuda" else "adamw",
                               lr=LR, weight_decay=0.0)
    params = train.trainable_parameters(model)
    res = train_steps(model, params, opt, batches, lambda b: train.lm_loss(model(b[0]), b[1]),
                      dtype, before)
    longest = max((ids.shape for ids, _ in batches), key=lambda s: s[1])
    res["estimate"] = estimate_bytes(model, tuple(longest), dtype, checkpointing=True)
    return res


def compare(cfg: models.ModelConfig, device: torch.device, dtype: torch.dtype, steps: int,
            batch: int) -> bool:
    """Export ``cfg`` randomly initialised, fine-tune it both ways, print the table; ok?"""
    task = chat_task()  # lesson 10's: the user sends a word, the assistant answers it reversed
    if task.max_seq_len > cfg.max_seq_len:
        raise ValueError(f"{task.name}'s conversations take up to {task.max_seq_len} tokens, "
                         f"more than {cfg.name}'s {cfg.max_seq_len} positions")
    with tempfile.TemporaryDirectory(prefix="gpu-standard-stack-") as tmp:
        model_dir, start_dir = Path(tmp) / "model", Path(tmp) / "peft-start"
        seed_everything(0)
        model = models.build(cfg, device=device, dtype=dtype)  # the dtype one quantizes from
        n_params = sum(p.numel() for p in model.parameters())
        hf_export.export_hf(model_dir, model)  # the course tokenizer: vocabulary 128
        del model
        if device.type == "cuda":
            # cuBLAS allocates a workspace at its first matmul, and backward's thread another:
            # made now, they are in both sides' baseline rather than in the first side's peak
            x = torch.ones(8, 8, device=device, dtype=dtype, requires_grad=True)
            (x @ x).sum().backward()

        def stream():  # the batch stream of labkit.train.train (and of lesson 10's cells)
            return random.Random(f"train/{task.name}/{SEED}")

        tokenizer = _deps.import_hf()[0].AutoTokenizer.from_pretrained(model_dir)
        peft_stream, lab_stream = stream(), stream()
        hf_batches = [{k: v.to(device) for k, v in S.chat_batch(
            tokenizer, task.conversations(batch, rng=peft_stream)).items()}
            for _ in range(steps)]
        lab_batches = [tuple(t.to(device) for t in task.batch(batch, rng=lab_stream))
                       for _ in range(steps)]
        res = {PEFT: standard_stack(model_dir, start_dir, hf_batches, dtype)}
        res[LABKIT] = labkit_path(model_dir, start_dir, lab_batches, dtype)
    allocated(device)  # leave the GPU as it was found

    tol, ref = TOLERANCE[dtype], res[PEFT]["losses"]
    judged = steps if dtype == torch.float32 else min(steps, JUDGED_STEPS)
    scale = max(abs(v) for v in ref)
    print(f"standard stack vs labkit on an exported {cfg.name} ({cfg.n_layers} layers, hidden "
          f"{cfg.hidden_size}, MLP {cfg.intermediate_size}, {cfg.n_heads} / {cfg.n_kv_heads} "
          f"query / key-value heads, {n_params:,} parameters, random init): 4-bit NF4 + double "
          f"quant, r={R} on all 7 linears, gradient checkpointing, {str(dtype)[6:]} compute, "
          f"{'paged ' if device.type == 'cuda' else ''}AdamW lr {LR:g}, clip {CLIP:g}; "
          f"{steps} steps of {batch} chat conversations, one contender after the other; "
          f"max|dloss| over steps 1-{judged}")
    head = (f"{'contender':<20} {'step ms':>8} {'/ PEFT':>7} {'peak MiB':>8} {'est. MiB':>8} "
            f"{'first loss':>10} {'last loss':>9} {'max|dloss|':>10}")
    print(head)
    print("-" * len(head))
    ok = True
    for name, r in res.items():
        gap = max(abs(a - b) for a, b in zip(r["losses"][:judged], ref[:judged], strict=True))
        ok &= all(math.isfinite(v) for v in r["losses"]) and gap <= tol * scale
        peak = f"{r['peak'] / MiB:8.1f}" if r["peak"] is not None else f"{'n/a':>8}"
        print(f"{name:<20} {r['ms']:>8.1f} {r['ms'] / res[PEFT]['ms']:>7.2f} {peak} "
              f"{res[LABKIT]['estimate'] / MiB:>8.1f} {r['losses'][0]:>10.4f} "
              f"{r['losses'][-1]:>9.4f} {gap:>10.2e}")
    print(f"standard stack vs labkit: {'ok' if ok else 'FAILED'} (every loss finite; steps "
          f"1-{judged} equal within {tol:g} x the largest PEFT loss, {scale:.4f})")
    return ok
