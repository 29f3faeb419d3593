"""The CUDA allocator's peak of a training step: the largest moment over its phases.

:func:`labkit.memory.estimate` counts what a step *holds* (weights, gradients, optimizer
state, the tensors autograd saves); that is what the CPU measurement checks to the byte. A
GPU runs out of memory at the step's *peak*, ``torch.cuda.max_memory_allocated``, which is
the largest sum of tensors alive at one moment. :func:`estimate_peak` follows one step of
labkit's loop (:func:`labkit.train.train`, and ``benchmarks/gpu_memory.py``)::

    with torch.autocast("cuda", dtype=bf16):
        logits = model(ids)             # forward: the previous step's logits and gradients
    loss = lm_loss(logits, labels)      #          are still alive (zero_grad comes later)
    opt.zero_grad(set_to_none=True)
    loss.backward()                     # backward
    opt.step()                          # optimizer step

and takes the largest of these moments, each a list of named terms (shapes x dtype sizes):

* ``forward, last block`` (the high point with gradient checkpointing): the blocks' saved
  tensors (with checkpointing, their inputs), autocast's cache of compute-dtype copies of
  every adapter weight (autocast keeps a cast of a leaf tensor that requires grad until the
  autocast block exits: ``cached_cast`` in PyTorch's ``autocast_mode.cpp``), and the working
  set of one attention: the normed input, q, k and v at H heads, the masked scores (compute
  dtype), their float32 copy and the float32 softmax (CUDA autocast runs ``softmax`` in
  float32: PyTorch's autocast op reference);
* ``forward, loss``: everything saved, the new logits, and ``lm_loss``'s float32 copy of
  the logits beside the float32 log-softmax it saves (``labkit/train/evaluation.py``);
* ``backward, start`` (the gradients were set to None): everything saved, the logits, the
  incoming and outgoing gradients of the log-softmax (2 x N V 4 bytes);
* ``backward, last recompute`` (checkpointing only): all gradients, one block's input and
  its recomputed saved tensors, autocast copies of its adapters, and the gradient of its
  attention probabilities in float32 and in the compute dtype;
* ``optimizer step``: the gradients, and torch's multi-tensor AdamW's one temporary list the
  size of the second moments (``torch._foreach_sqrt(exp_avg_sqs)`` in ``torch/optim/adamw.py``);
  bitsandbytes' optimizers update in fused kernels, with no temporaries.

Every moment also holds the weights, the optimizer state that lives in the allocator, and
two cuBLAS workspaces (PyTorch gives each thread's cuBLAS handle one, ``getChosenWorkspaceSize``
in ``aten/src/ATen/cuda/CublasHandlePool.cpp``: 32 MiB on Hopper and later, 4096 KiB x 2 +
16 KiB x 8 before; the forward runs on the Python thread, the backward on autograd's device
thread). Paged AdamW keeps its moments in CUDA unified memory, outside the allocator, except
those of tensors with fewer than 1e5 elements (``get_state_buffer`` in bitsandbytes'
``optim/optimizer.py``): they are a line of their own, beside the peak.

Hugging Face's ``Trainer`` calls ``zero_grad`` after ``optimizer.step()`` and keeps no
logits between steps, so with ``loop="hf_trainer"`` the forward holds neither the previous
gradients nor the previous logits. What the allocator itself adds (rounding blocks up, not
splitting a cached block, about 1 % here) is not modelled: ``tests/test_memory_peak.py``
compares the estimate with measured rows and states the tolerances.

Imports: :mod:`labkit.memory.breakdown`, :mod:`labkit.memory.estimation`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from labkit.memory.breakdown import (
    BLOCK_LINEARS,
    FLOAT_DTYPES,
    MB,
    MiB,
    _dtype,
    _get_config,
    _nbytes,
    _targets,
)
from labkit.memory.estimation import _shapes, estimate

#: cuBLAS workspace per handle, by whether the GPU is Hopper (sm 90) or later (PyTorch's
#: defaults, see the module docstring); measured: 2 x 32 MiB on an H200.
CUBLAS_WORKSPACE = {True: 32 * MiB, False: 4096 * 1024 * 2 + 16 * 1024 * 8}
#: Handles that get a workspace in one step: the forward's thread and autograd's.
CUBLAS_HANDLES = 2
#: bitsandbytes pages the state of tensors with at least this many elements.
PAGED_MIN_NUMEL = 100_000
LOOPS = ("labkit", "hf_trainer")
#: CUDA context and loaded kernels, outside the allocator: ``total - free`` of
#: ``cudaMemGetInfo`` less ``memory_reserved``, measured after three QLoRA steps on an H200
#: (torch 2.11.0+cu130, bitsandbytes 0.50.2): 750.8 MiB (526.8 MiB right after CUDA
#: initialised; 864.8 MiB for the 7B row). Other cards and versions differ by a few hundred
#: MiB; benchmarks/results/gpu_memory_2026-12-04_b.json.
CUDA_CONTEXT = round(750.8 * MiB)


@dataclass
class PeakEstimate:
    """The allocator peak of one step, the moment it happens, and what a card must hold.

    Attributes:
        moments: each moment of the step -> its named terms (bytes alive then).
        resident: the weights at rest (``memory_allocated`` before the first step).
        paged: optimizer state in CUDA unified memory (outside the allocator).
        context: CUDA context and loaded kernels, outside the allocator (see
            :data:`CUDA_CONTEXT`).
        load: the largest allocation while loading: the whole base in the compute dtype,
            as :func:`labkit.models.build` makes it before :func:`labkit.qlora.prepare_qlora`.
        loop: the training loop modelled (``"labkit"`` or ``"hf_trainer"``).
    """

    moments: dict[str, dict[str, int]]
    resident: int
    paged: int
    context: int
    load: int
    loop: str = "labkit"
    label: str = ""

    @property
    def peak(self) -> int:
        """Predicted ``torch.cuda.max_memory_allocated`` of a steady-state step."""
        return max(sum(t.values()) for t in self.moments.values())

    @property
    def moment(self) -> str:
        """The moment that holds the peak."""
        return max(self.moments, key=lambda m: sum(self.moments[m].values()))

    @property
    def device_total(self) -> int:
        """What the card must have free: the peak, the CUDA context and the paged state."""
        return self.peak + self.context + self.paged

    def table(self, unit: str = "MB") -> str:
        """Each moment's total, the peak's terms, and the lines outside the allocator."""
        div = {"MB": MB, "MiB": MiB}[unit]
        rows = [f"{self.label}".rstrip()] if self.label else []
        for m, terms in self.moments.items():
            mark = "  <- peak" if m == self.moment else ""
            rows.append(f"{m:<26}{sum(terms.values()) / div:10.1f} {unit}{mark}")
        rows.append(f"{'CUDA context (outside)':<26}{self.context / div:10.1f} {unit}")
        if self.paged:
            rows.append(f"{'paged optimizer state':<26}{self.paged / div:10.1f} {unit}")
        rows.append(f"{'device total':<26}{self.device_total / div:10.1f} {unit}")
        return "\n".join(rows)


def _adapter_tensors(cfg, targets, r: int) -> list[int]:
    """Element counts of every adapter tensor (A and B of each targeted linear)."""
    out = []
    for leaf, pname, shape in _shapes(cfg)[0]:
        if leaf in targets and pname == "weight":
            d_out, k_in = shape
            out += [r * k_in, d_out * r]
    return out


def estimate_peak(config, method: str = "qlora", batch: int = 1, seq_len: int = 512, *,
                  compute_dtype="bf16", optimizer: str = "adamw", r: int = 8,
                  targets=None, gradient_checkpointing: bool = False, hopper: bool = True,
                  loop: str = "labkit", **kwargs) -> PeakEstimate:
    """Predict the CUDA allocator's peak of one LoRA / QLoRA step under bf16 autocast.

    Args are those of :func:`labkit.memory.estimate` (``method`` LoRA or QLoRA, adapters in
    float32, the step under autocast), plus ``hopper`` (the GPU is Hopper or later: the
    cuBLAS workspace size) and ``loop`` (``"labkit"`` or ``"hf_trainer"``, see the module
    docstring).

    Raises:
        ValueError: full fine-tuning (this models autocast over a frozen base), an unknown
            loop, or any error :func:`labkit.memory.estimate` raises.
    """
    if method not in ("lora", "qlora"):
        raise ValueError(f"estimate_peak models LoRA and QLoRA under autocast; got method="
                         f"{method!r}. For full fine-tuning use memory.estimate().")
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; use one of {', '.join(LOOPS)}")
    cfg = _get_config(config)
    tg = _targets(BLOCK_LINEARS if targets is None else targets)
    e = estimate(cfg, method, batch, seq_len, compute_dtype=compute_dtype, optimizer=optimizer,
                 r=r, targets=tg, gradient_checkpointing=gradient_checkpointing, autocast=True,
                 **kwargs)
    s = _nbytes(_dtype(compute_dtype, "compute dtype", FLOAT_DTYPES))
    B, T, N = batch, seq_len, batch * seq_len
    d, H, V, L = cfg.hidden_size, cfg.n_heads, cfg.vocab_size, cfg.n_layers
    hts = B * H * T * T                      # elements of one layer's attention matrix
    logits = N * V * s                        # lm_head's output under autocast
    act = {k.removeprefix("activations/"): v for k, v in e.terms.items()
           if k.startswith("activations/")}
    head = act.get("log-softmax (fp32)", 0) + act.get("labels", 0) + act.get("loss scalar", 0)
    saved = e.activations + L * hts * 4 * (not gradient_checkpointing)  # + fp32 softmax
    tensors = _adapter_tensors(cfg, tg, r)
    cache = sum(tensors) * s                  # autocast's copies of every adapter weight
    cache_saved = act.get("adapter weight casts", 0)
    if optimizer == "paged_adamw":
        paged = sum(8 * n for n in tensors if n >= PAGED_MIN_NUMEL)
        state = e.optimizer - paged
    else:
        paged, state = 0, e.optimizer
    base = {"weights": e.weights, "optimizer state": state,
            "cuBLAS workspaces": CUBLAS_HANDLES * CUBLAS_WORKSPACE[bool(hopper)]}
    carried = ({"gradients (previous step)": e.gradients, "logits (previous step)": logits}
               if loop == "labkit" else {})
    attention = 4 * N * d * s + T * T + hts * (s + 4 + 4)  # one block's softmax moment
    moments: dict[str, dict[str, int]] = {}
    if gradient_checkpointing:
        moments["forward, last block"] = {
            **base, **carried, "block inputs": act.get("block inputs (checkpoints)", 0),
            "autocast weight copies": cache, "attention working set": attention}
    else:
        moments["forward, last block"] = {
            **base, **carried, "saved by the blocks": saved - head,
            "autocast weight copies (not saved)": cache - cache_saved,
            "attention working set": T * T + hts * (s + 4)}
    # ``logits = model(ids)`` has rebound the name: the previous step's logits are gone
    moments["forward, loss"] = {
        **base, **{k: v for k, v in carried.items() if k.startswith("gradients")},
        "saved tensors": saved, "logits": logits, "float32 copy of the logits": N * V * 4}
    moments["backward, start"] = {
        **base, "saved tensors": saved, "logits": logits,
        "log-softmax gradients (in, out)": 2 * N * V * 4}
    if gradient_checkpointing:
        per_block = cache // L
        moments["backward, last recompute"] = {
            **base, "gradients": e.gradients, "logits": logits * (loop == "labkit"),
            "one block input": N * d * s, "recomputed block": e.recompute + hts * 4,
            "autocast weight copies (one block)": per_block,
            "probs gradients": hts * (4 + s)}
    # torch's multi-tensor AdamW: one temporary list the size of the second moments
    temporaries = e.terms.get("optimizer/adamw moments", 0) // 2
    moments["optimizer step"] = {**base, "gradients": e.gradients,
                                 "logits": logits * (loop == "labkit"),
                                 "optimizer temporaries": temporaries}
    load = sum(math.prod(shape) for _, _, shape in _shapes(cfg)[0]) * s
    return PeakEstimate(moments, e.weights, paged, CUDA_CONTEXT, load, loop,
                        label=f"peak estimate: {cfg.name}, {method}, {B} x {T}")


def measured_rows() -> list[dict]:
    """QLoRA steps measured on an H200, to set beside :func:`estimate_peak`.

    Read from ``labkit/memory/measured_h200.json``, written by ``benchmarks/gpu_memory.py``
    (one fresh process per row, labkit's loop, bf16 autocast, NF4 + double quantization on
    the seven block linears, three steps, ``torch.manual_seed(0)``). Each row: ``config``,
    ``r``, ``batch``, ``seq_len``, ``optimizer``, ``checkpointing``, ``resident`` and ``peak``
    (``max_memory_allocated``, bytes), ``phases`` (the peak and the end of each phase).
    """
    return json.loads((Path(__file__).with_name("measured_h200.json")).read_text())["rows"]
