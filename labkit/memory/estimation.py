"""Estimating a training step's memory from the architecture, without allocating.

:func:`estimate` computes the breakdown that :func:`labkit.memory.measure` counts on a real
step: weights, gradients and optimizer state from the parameter shapes of the model built
on the ``meta`` device, activations from :func:`labkit.memory.activations.activation_terms`.
:func:`base_weight_bytes` is the frozen base alone.

Conventions of :func:`estimate` (units are bytes; GB means 10^9 bytes, GiB 2^30; device
capacities, as in :func:`labkit.memory.fits`, are GiB):

- weights: bytes per element of their dtype (fp32 4, bf16 / fp16 2). QLoRA: every targeted
  linear is stored by :func:`labkit.quant.quantized_nbytes` (packed 4-bit codes, absmax per
  block of 64, with double quantization one byte per block plus fp32 absmax per 256 blocks
  and an offset) plus the per-layer codebooks: the 16-entry fp32 4-bit code and, with double
  quantization, the 256-entry fp32 8-bit code (bitsandbytes 0.50 keeps one copy of each per
  layer). Embeddings, norms and the head stay in ``compute_dtype``.
- gradients: trainable parameters only, in their dtype (adapters: ``adapter_dtype``).
- optimizer: ``"sgd"`` (no momentum) 0; ``"sgd_momentum"`` one buffer per trainable
  element in its dtype; ``"adamw"`` (``torch.optim.AdamW``) two moments in the parameter's
  dtype (pass ``state_dtype="fp32"`` for the mixed-precision convention of fp32 moments)
  plus a 4-byte step counter per trainable tensor; ``"paged_adamw"`` (bitsandbytes, 32-bit)
  two fp32 moments, counted as device memory: the worst case, since paging only moves them
  to CPU RAM when the GPU runs out; ``"adamw8bit"`` (bitsandbytes): two uint8 moments plus
  one fp32 absmax per 256 elements each, and the two shared 256-entry fp32 code tables once;
  tensors under 4,096 elements keep fp32 moments (bitsandbytes' ``min_8bit_size``).
  ``master_weights=True`` adds an fp32 copy of every trainable parameter (mixed-precision
  training with 16-bit weights).
- DoRA (``use_dora=True``): each targeted linear also trains its magnitude vector, ``d_out``
  numbers in the adapter dtype, counted in weights, gradients and optimizer state like ``A``
  and ``B`` (one more tensor per layer: one more AdamW step counter), and its forward saves
  more (see :func:`activation_terms`).
- activations: see :func:`activation_terms` for every tensor, op by op. LoRA adapters are
  assumed without dropout; the step runs in the model's dtype, or, with ``autocast=True``
  (LoRA and QLoRA), under ``torch.autocast`` with adapters in their own dtype.

Imports torch, :mod:`labkit.models`, :mod:`labkit.quant` (4-bit storage) and
:mod:`labkit.memory.breakdown` / :mod:`labkit.memory.activations`.
"""

from __future__ import annotations

import functools
import math

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit import models, quant
from labkit.lora.counts import adapter_params
from labkit.memory.activations import activation_terms
from labkit.memory.breakdown import (
    BLOCK_LINEARS,
    ESTIMATED_OPTIMIZERS,
    FLOAT_DTYPES,
    METHODS,
    MemoryBreakdown,
    _dtype,
    _get_config,
    _nbytes,
    _positive_int,
    _targets,
)

QUANT_DTYPES = ("nf4", "fp4")
#: bitsandbytes' 8-bit optimizers: block size of the state quantization, smallest 8-bit tensor.
ADAM8BIT_BLOCKSIZE = 256
ADAM8BIT_MIN_SIZE = 4096


@functools.lru_cache(maxsize=32)
def _shapes(cfg) -> tuple[tuple[tuple[str, str, tuple[int, ...]], ...], int]:
    """``((module leaf name, parameter name, shape), ...)`` and the buffers' element count
    of ``cfg``'s model, built on the meta device (nothing allocated)."""
    model = models.build(cfg, device="meta")
    params = tuple((name.rsplit(".", 1)[-1], pname, tuple(p.shape))
                   for name, mod in model.named_modules()
                   for pname, p in mod.named_parameters(recurse=False))
    return params, sum(b.numel() for b in model.buffers())


def estimate(config, method: str = "full", batch: int = 1, seq_len: int = 512, *,
             weight_dtype=None, compute_dtype=None, adapter_dtype="fp32",
             optimizer: str = "adamw", state_dtype=None, master_weights: bool = False,
             r: int = 8, targets=BLOCK_LINEARS, gradient_checkpointing: bool = False,
             blocksize: int = 64, double_quant: bool = True,
             autocast: bool = False, use_dora: bool = False) -> MemoryBreakdown:
    """The memory of one training step of ``config``, computed without allocating.

    Args:
        config: a :class:`labkit.models.ModelConfig`, a registered name (``"llama-2-7b"``)
            or a dict of its fields.
        method: ``"full"`` (every parameter trains), ``"lora"`` (frozen base + adapters on
            ``targets``), ``"qlora"`` (the targeted linears frozen in 4 bits + adapters).
        batch, seq_len: sequences per step and tokens per sequence (> 0).
        weight_dtype: full / LoRA: the weights' float dtype (default fp32), which is also
            the compute dtype (the step runs in it, no autocast). QLoRA: the 4-bit format of
            the targeted linears, ``"nf4"`` (default) or ``"fp4"``.
        compute_dtype: dtype of activations; full / LoRA: must equal ``weight_dtype``
            (default). QLoRA: also the dtype of embeddings, norms and head (default bf16).
        adapter_dtype: dtype of the LoRA adapters (labkit and PEFT default: fp32).
        optimizer: one of :data:`ESTIMATED_OPTIMIZERS` (conventions in the module docstring).
        state_dtype: dtype of AdamW / momentum state; default: the parameter's own
            (``torch.optim`` behaviour). ``"fp32"`` for fp32 moments under 16-bit weights.
        master_weights: add an fp32 copy of every trainable parameter (mixed precision).
        r, targets: LoRA rank and target linears (names of :data:`BLOCK_LINEARS`).
        gradient_checkpointing: keep block inputs only (see :func:`activation_terms`).
        blocksize, double_quant: QLoRA's 4-bit storage (:func:`labkit.quant.quantized_nbytes`).
        autocast: LoRA / QLoRA only: the step runs under ``torch.autocast`` in the compute
            dtype with adapters in ``adapter_dtype``, as on labkit's GPU path
            (see :func:`activation_terms`).
        use_dora: LoRA / QLoRA with DoRA: ``d_out`` more trainable numbers per targeted
            linear (the magnitude) and DoRA's saved tensors; not with ``autocast``.

    Returns:
        A :class:`MemoryBreakdown` whose ``terms`` name every term (``"weights/4bit
        linears"``, ``"optimizer/adamw moments"``, ``"activations/probs"``...).

    Raises:
        ValueError: unknown method, dtype or optimizer; batch or seq_len <= 0; a config
            missing a field; a target the estimator does not know.
    """
    cfg = _get_config(config)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if optimizer not in ESTIMATED_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of "
                         f"{', '.join(ESTIMATED_OPTIMIZERS)}")
    _positive_int("batch", batch)
    _positive_int("seq_len", seq_len)
    if seq_len > cfg.max_seq_len:
        # the model itself refuses such a sequence (its rotary tables end there)
        raise ValueError(f"seq_len={seq_len} is longer than {cfg.name}'s max_seq_len "
                         f"{cfg.max_seq_len}; use at most {cfg.max_seq_len} tokens, or a config "
                         "with a longer max_seq_len (config.replace(max_seq_len=...))")
    if method == "qlora":
        qtype = (weight_dtype or "nf4")
        if not (isinstance(qtype, str) and qtype.lower() in QUANT_DTYPES):
            raise ValueError(f"unknown weight dtype {weight_dtype!r} for QLoRA: the base is "
                             f"stored in 4 bits, use one of {', '.join(QUANT_DTYPES)}")
        cd = _dtype(compute_dtype or "bf16", "compute dtype", FLOAT_DTYPES)
        wd = cd
    else:
        wd = _dtype(weight_dtype or "fp32", "weight dtype", FLOAT_DTYPES)
        cd = _dtype(compute_dtype or wd, "compute dtype", FLOAT_DTYPES)
        if cd != wd:
            raise ValueError(
                f"compute dtype {cd} differs from weight dtype {wd}: autocast of the base "
                "weights is not modelled (it caches cast weights); the step runs in the "
                "weights' dtype")
    ad = _dtype(adapter_dtype, "adapter dtype", FLOAT_DTYPES)
    sd = None if state_dtype is None else _dtype(state_dtype, "state dtype", FLOAT_DTYPES)
    tg = () if method == "full" else _targets(targets)
    _positive_int("r", r)
    if use_dora and method == "full":
        raise ValueError("use_dora=True needs method='lora' or 'qlora' (DoRA is an adapter)")

    shapes, n_buffers = _shapes(cfg)
    out = MemoryBreakdown(label=f"estimate: {cfg.name}, {method}")
    terms: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        if n:
            terms[name] = terms.get(name, 0) + n

    # weights
    w, sw = _nbytes(wd), {}
    trainable: list[tuple[int, torch.dtype]] = []  # (numel, dtype) per trainable tensor
    for leaf, pname, shape in shapes:
        numel = math.prod(shape)
        if method == "qlora" and leaf in tg:
            nb = quant.quantized_nbytes(numel, blocksize, double_quant, qtype.lower())
            packed = -(-numel // 2)
            sw["4bit"] = sw.get("4bit", 0) + packed
            sw["quant_state"] = sw.get("quant_state", 0) + nb - packed
        else:
            key = str(wd).removeprefix("torch.")
            sw[key] = sw.get(key, 0) + numel * w
            if method == "full":
                trainable.append((numel, wd))
        if method != "full" and leaf in tg and pname == "weight":
            d_out, k_in = shape
            trainable += [(r * k_in, ad), (d_out * r, ad)]  # A (r x k_in), B (d_out x r)
            trainable += [(d_out, ad)] if use_dora else []  # DoRA's magnitude m (d_out,)
            key = str(ad).removeprefix("torch.")
            n_lora = adapter_params(d_out, k_in, r) + (d_out if use_dora else 0)
            sw[key] = sw.get(key, 0) + n_lora * _nbytes(ad)
    sw["buffers"] = n_buffers * w
    out.weights_by_dtype = sw
    out.weights = sum(sw.values())
    n_adapter = sum(n * _nbytes(dt) for n, dt in trainable) if method != "full" else 0
    add("weights/4-bit codes", sw.get("4bit", 0))
    add("weights/quantization state", sw.get("quant_state", 0))
    add("weights/buffers (rotary tables)", sw["buffers"])
    add(f"weights/lora adapters ({str(ad).removeprefix('torch.')})", n_adapter)
    add(f"weights/{'base ' if method != 'full' else ''}{str(wd).removeprefix('torch.')}",
        out.weights - sw.get("4bit", 0) - sw.get("quant_state", 0) - sw["buffers"] - n_adapter)

    # gradients: one per trainable element, in its dtype
    out.gradients = sum(n * _nbytes(dt) for n, dt in trainable)
    add("gradients/trainable parameters", out.gradients)

    # optimizer state
    numel = sum(n for n, _ in trainable)
    if optimizer == "sgd_momentum":
        add("optimizer/momentum", sum(n * _nbytes(sd or dt) for n, dt in trainable))
    elif optimizer == "adamw":
        add("optimizer/adamw moments", sum(2 * n * _nbytes(sd or dt) for n, dt in trainable))
        add("optimizer/step counters", 4 * len(trainable))
    elif optimizer == "paged_adamw":
        add("optimizer/paged adamw moments (fp32)", 8 * numel)
    elif optimizer == "adamw8bit":
        small = [n for n, _ in trainable if n < ADAM8BIT_MIN_SIZE]
        big = [n for n, _ in trainable if n >= ADAM8BIT_MIN_SIZE]
        add("optimizer/8-bit moments", 2 * sum(big))
        add("optimizer/8-bit absmax", 2 * 4 * sum(-(-n // ADAM8BIT_BLOCKSIZE) for n in big))
        add("optimizer/8-bit code tables", 2 * 256 * 4 if big else 0)
        add("optimizer/fp32 moments of small tensors", 8 * sum(small))
    if master_weights:
        add("optimizer/fp32 master weights", 4 * numel)
    out.optimizer = sum(v for k, v in terms.items() if k.startswith("optimizer/"))

    # activations
    act, out.recompute = activation_terms(
        cfg, batch, seq_len, method=method, compute_dtype=cd, adapter_dtype=ad, r=r,
        targets=tg or BLOCK_LINEARS, gradient_checkpointing=gradient_checkpointing,
        autocast=autocast, use_dora=use_dora)
    for k, v in act.items():
        add(f"activations/{k}", v)
    add("recompute/one block", out.recompute)
    out.activations = sum(act.values())
    out.terms = terms
    return out


# --------------------------------------------------------------------------- the frozen base


def base_weight_bytes(config, quant_type: str | None = "nf4", dtype="bf16",
                      targets=BLOCK_LINEARS, blocksize: int = 64,
                      double_quant: bool = True) -> int:
    """Bytes of a model's frozen base alone (no adapters, no training state).

    ``quant_type=None``: every parameter in ``dtype``. Otherwise the ``targets`` linears
    in 4 bits (codes + quantization state, codebooks per layer) and embeddings, norms,
    head and buffers in ``dtype``: what QLoRA loads before training (e.g. LLaMA-7B in NF4
    with double quantization: about 3.87 GB).
    """
    if quant_type is None:
        est = estimate(config, "full", 1, 1, weight_dtype=dtype, optimizer="sgd")
        return est.weights
    est = estimate(config, "qlora", 1, 1, weight_dtype=quant_type, compute_dtype=dtype,
                   targets=targets, r=1, optimizer="sgd", blocksize=blocksize,
                   double_quant=double_quant)
    return est.weights - sum(v for k, v in est.terms.items()
                             if k.startswith("weights/lora adapters"))
