"""Where training memory goes: measured on a real step, and estimated for models too big to build.

A training step holds four kinds of tensors (Rajbhandari et al., 2020, "ZeRO", sec. 3):

    weights      the parameters (and, for QLoRA, the 4-bit codes plus their quantization
                 state), plus the model's buffers (here: the rotary cos / sin tables)
    gradients    one per *trainable* parameter, in that parameter's dtype
    optimizer    the optimizer's state: AdamW keeps two moments per trainable parameter
    activations  the tensors autograd saves in the forward pass to compute the backward

:func:`measure` runs one real step and counts each kind; :func:`estimate` computes the same
breakdown from a :class:`labkit.models.ModelConfig` without allocating anything: parameter
counts come from the model built on the ``meta`` device, activation bytes from the
architecture and the pinned, written-out attention of :mod:`labkit.models`. No constant is
fitted: every term is a product of shapes and bytes per element, and the tests check the
estimate against the measurement (within 5 %, per component and in total) on the shipped
model and on a second configuration not used while writing the estimator.

Definitions (the same in :func:`measure` and :func:`estimate`):

- **activations**: the bytes of the distinct storages that autograd saves during the forward
  pass (counted with ``torch.autograd.graph.saved_tensors_hooks``), i.e. what is held when
  backward starts. Tensors that share a storage (views) count once; the model's own
  parameters and buffers are not activations. The input ids and labels that the loss and the
  embedding save do count (they are saved tensors).
- **recompute** (gradient checkpointing only): with checkpointing the forward saves only each
  block's input; during backward each block is re-run and its saved tensors live until its
  backward is done. ``recompute`` is the largest one block's saved bytes. Peak model:
  ``activations + recompute`` is an upper bound of what saved tensors occupy at any time in
  the backward (the block inputs still held plus one block's worth). Neither function counts
  the transient tensors of backward itself (incoming gradients, temporaries) or allocator
  overhead; on CUDA, :func:`measure` reports the allocator's peak beside the count.
- **optimizer**: every tensor in ``optimizer.state`` (distinct storages), after one step.

Conventions of :func:`estimate` (units are bytes; GB means 10^9 bytes, GiB 2^30; device
capacities, as in :func:`fits`, are GiB):

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
- activations: see :func:`activation_terms` for every tensor, op by op. LoRA adapters are
  assumed without dropout; the step runs in the model's dtype, or, with ``autocast=True``
  (LoRA and QLoRA), under ``torch.autocast`` with adapters in their own dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn as nn

#: The four components of the stacked bars, in drawing order.
COMPONENTS = ("weights", "gradients", "optimizer", "activations")
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("sgd", "sgd_momentum", "adamw", "paged_adamw", "adamw8bit")
#: The linear layers of a block, by name: LoRA / QLoRA targets the estimator understands.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FLOAT_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
QUANT_DTYPES = ("nf4", "fp4")
GB = 10**9
MB = 10**6
#: GPU memory is sold in binary units: an "80 GB" card holds 80 GiB = 80 * 2^30 bytes.
GiB = 2**30
#: bitsandbytes' 8-bit optimizers: block size of the state quantization, smallest 8-bit tensor.
ADAM8BIT_BLOCKSIZE = 256
ADAM8BIT_MIN_SIZE = 4096


# --------------------------------------------------------------------------- the breakdown


@dataclass
class MemoryBreakdown:
    """Bytes held by one training step, by component; :func:`measure` and :func:`estimate`.

    Attributes:
        weights: parameters + 4-bit quantization state + buffers.
        gradients: gradients of the trainable parameters.
        optimizer: optimizer state (and an fp32 master copy, if any).
        activations: tensors saved for backward by the forward pass (see the module doc).
        recompute: with gradient checkpointing, one block's saved tensors during backward.
        weights_by_dtype: ``weights`` split by dtype name, ``"4bit"`` (packed codes),
            ``"quant_state"`` and ``"buffers"``.
        terms: named terms (``"activations/probs"``...) that add up to the components.
        peak_allocated: on CUDA, ``torch.cuda.max_memory_allocated`` over the step.
    """

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    recompute: int = 0
    weights_by_dtype: dict[str, int] = field(default_factory=dict)
    terms: dict[str, int] = field(default_factory=dict)
    peak_allocated: int | None = None
    label: str = ""

    @property
    def total(self) -> int:
        """weights + gradients + optimizer + activations + recompute."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.recompute

    def stack(self, separate_recompute: bool = False) -> dict[str, int]:
        """The components of a stacked bar. By default four, with ``recompute`` added to
        the activations (both are saved tensors); ``separate_recompute=True`` adds a fifth
        part ``"recompute"`` and leaves ``"activations"`` as the forward's saved tensors."""
        if separate_recompute:
            return {"weights": self.weights, "gradients": self.gradients,
                    "optimizer": self.optimizer, "activations": self.activations,
                    "recompute": self.recompute}
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations + self.recompute}

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["total"] = self.total
        return d

    def table(self, unit: str = "MB") -> str:
        """A small text table in MB (1 decimal) or GB (2 decimals)."""
        if unit not in ("MB", "GB"):
            raise ValueError(f"unit must be 'MB' or 'GB', got {unit!r}")
        div, fmt = {"MB": (MB, "{:10.1f}"), "GB": (GB, "{:10.2f}")}[unit]
        rows = [("weights", self.weights), ("gradients", self.gradients),
                ("optimizer", self.optimizer), ("activations", self.activations)]
        if self.recompute:
            rows.append(("recompute", self.recompute))
        rows.append(("total", self.total))
        if self.peak_allocated is not None:
            rows.append(("CUDA peak", self.peak_allocated))
        head = f"{self.label}\n" if self.label else ""
        return head + "\n".join(f"{k:<12}{fmt.format(v / div)} {unit}" for k, v in rows)

    def __str__(self) -> str:
        return self.table()


# --------------------------------------------------------------------------- measurement


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    st = t.untyped_storage()
    return (str(t.device), st.data_ptr())


def _storage_nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _quant_state_tensors(state) -> Iterable[torch.Tensor]:
    """Tensors of a bitsandbytes ``QuantState`` (with its nested ``state2``) or of a
    :class:`labkit.quant.QuantState`: absmax, offset, codebooks."""
    if state is None:
        return
    for name in ("absmax", "code", "offset", "nested_absmax", "nested_code", "nested_offset"):
        t = getattr(state, name, None)
        if isinstance(t, torch.Tensor):
            yield t
    yield from _quant_state_tensors(getattr(state, "state2", None))


def _is_4bit(p: torch.Tensor) -> bool:
    return type(p).__name__ == "Params4bit" or getattr(p, "_labkit_4bit", False)


def weight_bytes(model: nn.Module) -> tuple[int, dict[str, int]]:
    """Bytes of a model's parameters, 4-bit codes, quantization state and buffers.

    Shared storages (tied weights, the shared nested code of bitsandbytes) count once.
    4-bit weights are recognised as a ``Params4bit`` parameter (bitsandbytes' or labkit's:
    packed codes); their state is bitsandbytes' ``param.quant_state`` or, for
    :class:`labkit.qlora.Linear4bit`, the layer's ``quant_state`` (views of its buffers).

    Returns:
        ``(total, by_kind)`` with kinds: dtype names, ``"4bit"``, ``"quant_state"``,
        ``"buffers"``.
    """
    seen: set = set()
    by: dict[str, int] = {}

    def add(kind: str, t: torch.Tensor) -> None:
        k = _storage_key(t)
        if k in seen or t.device.type == "meta":
            return
        seen.add(k)
        by[kind] = by.get(kind, 0) + _storage_nbytes(t)

    for m in model.modules():  # labkit's 4-bit layer: state in buffers, exposed as quant_state
        if isinstance(getattr(type(m), "quant_state", None), property):
            for t in _quant_state_tensors(m.quant_state):
                add("quant_state", t)
    for p in model.parameters():
        if _is_4bit(p):
            add("4bit", p)
            for t in _quant_state_tensors(getattr(p, "quant_state", None)):
                add("quant_state", t)
        else:
            add(str(p.dtype).removeprefix("torch."), p)
    for b in model.buffers():
        add("buffers", b)
    return sum(by.values()), by


def model_storages(model: nn.Module) -> set:
    """Keys of the storages a model holds (parameters, buffers, 4-bit state): what
    :class:`SavedTensorCounter` must not count as activations."""
    keys = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    for p in model.parameters():
        for t in _quant_state_tensors(getattr(p, "quant_state", None)):
            keys.add(_storage_key(t))
    return keys


class SavedTensorCounter:
    """Context manager: sums the distinct storages autograd saves while it is active.

    ``exclude`` holds storage keys never counted (the model's parameters and buffers).
    Each storage counts once with its full size (a saved view keeps its whole storage
    alive). ``records`` lists ``(shape, dtype, nbytes)`` of each counted storage.
    """

    def __init__(self, exclude: set | None = None):
        self.exclude = exclude or set()
        self.seen: set = set()
        self.nbytes = 0
        self.records: list[tuple[tuple[int, ...], torch.dtype, int]] = []
        self._ctx = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        k = _storage_key(t)
        if k not in self.exclude and k not in self.seen:
            self.seen.add(k)
            n = _storage_nbytes(t)
            self.nbytes += n
            self.records.append((tuple(t.shape), t.dtype, n))
        return t

    def __enter__(self) -> SavedTensorCounter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def _resolve_optimizer(optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params, lr=lr, weight_decay=0.0)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if optimizer == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if optimizer in ("paged_adamw", "adamw8bit"):
        # bitsandbytes' own classes, even on a CPU (where labkit.train falls back to torch's
        # AdamW): the point is to count *their* state. Paging itself needs CUDA; on a CPU
        # bitsandbytes warns and keeps the same fp32 state unpaged.
        bnb = _deps.import_bnb()
        cls = bnb.optim.PagedAdamW if optimizer == "paged_adamw" else bnb.optim.AdamW8bit
        return cls(params, lr=lr, weight_decay=0.0)
    raise ValueError(
        f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)} "
        "(or pass a torch.optim.Optimizer, or a factory(params, lr=, weight_decay=))")


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the distinct tensors in ``opt.state`` (moments, step counters, 8-bit maps)."""
    seen, n = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and _storage_key(v) not in seen:
                seen.add(_storage_key(v))
                n += _storage_nbytes(v)
    return n


def _default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    from labkit.train import lm_loss

    return lm_loss(logits, labels)


def measure(model: nn.Module, batch, optimizer="adamw", *, lr: float = 1e-3,
            gradient_checkpointing: bool | None = None,
            loss_fn: Callable | None = None) -> MemoryBreakdown:
    """Run one real training step and count what it holds, by component.

    The step: ``loss_fn(model(input_ids), labels).backward(); optimizer.step()``. The
    model is changed (one optimizer step). Gradients are counted after backward, the
    optimizer state after the step, activations with saved-tensor hooks during the forward
    (see the module docstring for the definitions). With gradient checkpointing on,
    ``recompute`` re-runs each block's forward alone under the hooks (what the backward
    recomputes) and keeps the largest.

    Args:
        model: a :class:`labkit.models.LlamaLM` (full, with LoRA, or with a 4-bit base);
            any causal LM works for everything but ``recompute``.
        batch: ``(input_ids, labels)``, both (B, T) int64, as ``Task.batch`` returns them.
        optimizer: a name in :data:`OPTIMIZERS` (``"sgd"`` is plain SGD, no momentum),
            a ``torch.optim.Optimizer`` over the trainable parameters, or a factory.
        lr: learning rate of the step.
        gradient_checkpointing: set ``model.gradient_checkpointing`` for this step
            (``None`` leaves it as it is).
        loss_fn: ``(logits, labels) -> loss``; default :func:`labkit.train.lm_loss`.

    Returns:
        A :class:`MemoryBreakdown`; on CUDA ``peak_allocated`` is the allocator's peak.

    Raises:
        ValueError: a malformed batch, nothing trainable, an unknown optimizer name.
    """
    ids, labels = _check_batch(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: unfreeze some or add LoRA")
    device = params[0].device
    ids, labels = ids.to(device), labels.to(device)
    opt = _resolve_optimizer(optimizer, params, lr)
    loss_fn = loss_fn or _default_loss
    old_ckpt = getattr(model, "gradient_checkpointing", None)
    if gradient_checkpointing is not None:
        if old_ckpt is None:
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing switch")
        model.gradient_checkpointing = gradient_checkpointing
    ckpt = bool(getattr(model, "gradient_checkpointing", False)) or any(
        getattr(m, "_checkpointed", False) for m in model.modules())  # qlora's wrapper

    out = MemoryBreakdown(label="measured")
    out.weights, out.weights_by_dtype = weight_bytes(model)
    exclude = model_storages(model)
    block_inputs: list[tuple[nn.Module, torch.Tensor]] = []
    handles = []
    if ckpt:
        from labkit.models import Block

        def grab(mod, args):
            if len(block_inputs) < len(model.layers) and all(m is not mod for m, _ in
                                                              block_inputs):
                block_inputs.append((mod, args[0]))

        handles = [m.register_forward_pre_hook(grab) for m in model.modules()
                   if isinstance(m, Block)]
    was_training = model.training
    model.train()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        opt.zero_grad(set_to_none=True)
        with SavedTensorCounter(exclude) as counter:
            loss = loss_fn(model(ids), labels)
        for h in handles:
            h.remove()
        handles = []
        loss.backward()
        seen = set()
        for p in params:
            if p.grad is not None and _storage_key(p.grad) not in seen:
                seen.add(_storage_key(p.grad))
                out.gradients += _storage_nbytes(p.grad)
        opt.step()
        out.optimizer = optimizer_bytes(opt)
        if cuda:
            torch.cuda.synchronize(device)
            out.peak_allocated = torch.cuda.max_memory_allocated(device)
        out.activations = counter.nbytes
        if ckpt:
            out.recompute = max(_block_saved_bytes(m, x, model.rope, exclude)
                                for m, x in block_inputs)
    finally:
        for h in handles:
            h.remove()
        if gradient_checkpointing is not None:
            model.gradient_checkpointing = old_ckpt
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
    out.terms = {"weights": out.weights, "gradients": out.gradients,
                 "optimizer": out.optimizer, "activations": out.activations,
                 "recompute": out.recompute}
    return out


def _block_saved_bytes(block: nn.Module, x: torch.Tensor, rope, exclude: set) -> int:
    """Saved bytes of one block's forward, as the checkpointed backward recomputes it."""
    x_in = x.detach().requires_grad_(x.requires_grad)
    with torch.enable_grad(), SavedTensorCounter(exclude) as c:
        type(block).forward(block, x_in, rope)  # the class's forward: never a checkpoint
    return c.nbytes


def _check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ValueError("batch must be (input_ids, labels), as labkit.data's Task.batch "
                         f"returns it; got {type(batch).__name__}")
    ids, labels = batch
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.numel() > 0):
        raise ValueError("input_ids must be a non-empty (batch, seq_len) tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(ids.shape)}")
    return ids, labels


# --------------------------------------------------------------------------- estimation


def _dtype(value, what: str, allowed: dict) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in allowed.values():
        return value
    if isinstance(value, str) and value.lower() in allowed:
        return allowed[value.lower()]
    raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int (> 0), got {v!r}")
    return v


def _get_config(config):
    from labkit import models

    if isinstance(config, models.ModelConfig):
        return config
    if isinstance(config, dict):
        need = ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads")
        missing = [k for k in need if k not in config]
        if missing:
            raise ValueError(f"config is missing field(s) {missing}; a ModelConfig needs "
                             f"{list(need)} (n_kv_heads, max_seq_len... have defaults)")
        return models.ModelConfig.from_dict(config)
    if isinstance(config, str):
        return models.get_config(config)
    need = ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads")
    missing = [k for k in need if not hasattr(config, k)]
    if missing:
        raise ValueError(f"config {type(config).__name__} is missing field(s) {missing}; pass "
                         "a labkit.models.ModelConfig, a registered name or a dict")
    fields = [f.name for f in dataclasses.fields(models.ModelConfig)]
    return models.ModelConfig(**{k: getattr(config, k) for k in fields if hasattr(config, k)})


def _targets(targets) -> tuple[str, ...]:
    if targets in ("all-linear", "all_linear", None):
        return BLOCK_LINEARS
    if isinstance(targets, str):
        targets = [targets]
    bad = [t for t in targets if t not in BLOCK_LINEARS]
    if bad or not targets:
        raise ValueError(f"unknown LoRA target(s) {bad or targets!r}; the estimator knows the "
                         f"block linears {', '.join(BLOCK_LINEARS)} (or 'all-linear')")
    return tuple(dict.fromkeys(targets))


@dataclass(frozen=True)
class _Setup:
    """What the activation accounting needs to know about a method."""

    full: bool               # every parameter trains (norms, embedding, head included)
    targets: tuple[str, ...]  # linears with a LoRA adapter
    r: int
    s: int                   # bytes per element of activations (compute dtype)
    s_adapter: int           # bytes per element of the adapters
    cast: bool               # adapter dtype != compute dtype: each adapter casts its input
    autocast: bool = False   # the step runs under torch.autocast (see activation_terms)


def activation_terms(config, batch: int, seq_len: int, *, method: str = "full",
                     compute_dtype="fp32", adapter_dtype="fp32", r: int = 8,
                     targets=BLOCK_LINEARS, gradient_checkpointing: bool = False,
                     autocast: bool = False) -> tuple[dict[str, int], int]:
    """Named activation terms (bytes saved for backward) and the ``recompute`` term.

    Derived from :mod:`labkit.models`' code, op by op, with N = batch * seq_len tokens,
    d hidden, f intermediate, H heads, T seq_len, V vocab, s bytes per compute element.
    An op saves a tensor only when it needs it for the gradient of an input that
    requires grad, so what is saved depends on what trains (full vs LoRA) and, before the
    first adapter, on nothing requiring grad at all. Per op:

    ======================  ==========================================================
    embedding               the ids, N * 8, if the embedding trains
    RMSNorm(x)              x in fp32 (N d 4) and rsqrt (N * 4) if x requires grad;
                            the normalised y (N d s) if the norm's weight trains
    linear, trainable W     its input (shared by q/k/v, and by gate/up: one storage)
    LoRA linear             the input (a cast copy N k s_a per layer when the adapter dtype
                            differs) and A's output, N r s_a
    q @ k^T                 k expanded to H heads (N d s) if q requires grad; q (N d s) if
                            k does
    causal mask             T * T bool, a fresh one per layer
    softmax                 probs, B H T^2 s (also reused by probs @ v)
    probs @ v               v expanded to H heads (N d s) if probs requires grad
    o_proj input            the heads merged back, a copy (N d s)
    SwiGLU                  gate output (silu's input), up output, silu output: 3 N f s;
                            down_proj's input N f s if it trains
    head + loss             the fp32 log-softmax N V 4, the labels N * 8, a 4-byte scalar
    ======================  ==========================================================

    With ``gradient_checkpointing`` each block saves only its input (N d s) in the forward;
    the returned ``recompute`` is the largest block's own terms (re-run in backward).

    With ``autocast`` (the step runs under ``torch.autocast`` in the compute dtype, as
    :func:`labkit.train.train` does with ``dtype=``, and adapters in another dtype), each
    adapter's matmuls run on compute-dtype copies: the input cast and A's output take
    N k s and N r s, and the cast copies of B (always) and of A (when the input requires
    grad) are saved too. On CUDA, autocast also runs softmax in float32, which keeps probs
    in float32 beside a compute-dtype copy; that is not modelled (it adds at most
    B H T^2 * 4 bytes per block).
    """
    cfg = _get_config(config)
    B, T = _positive_int("batch", batch), _positive_int("seq_len", seq_len)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    cd = _dtype(compute_dtype, "compute dtype", FLOAT_DTYPES)
    s = _nbytes(cd)
    ad = _dtype(adapter_dtype, "adapter dtype", FLOAT_DTYPES)
    full = method == "full"
    if autocast and full:
        raise ValueError("autocast is modelled for LoRA and QLoRA adapters only; full "
                         "fine-tuning runs in the weights' dtype here")
    st = _Setup(full, () if full else _targets(targets), _positive_int("r", r), s,
                _nbytes(ad), ad != cd, bool(autocast))
    N, d, V = B * T, cfg.hidden_size, cfg.vocab_size
    terms: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        if n:
            terms[name] = terms.get(name, 0) + n

    rg = full  # does the residual stream require grad? (embedding output)
    add("embedding ids", 8 * N if full else 0)
    blocks = []
    for _ in range(cfg.n_layers):
        bt, rg = _block_terms(cfg, B, T, st, rg)
        blocks.append(bt)
        if gradient_checkpointing:
            add("block inputs (checkpoints)", N * d * s)
        else:
            for k, v in bt.items():
                add(k, v)
    # final norm, head and loss
    if rg:
        add("norm x (fp32)", N * d * 4)
        add("norm rsqrt", N * 4)
    if full:
        add("norm y", N * d * s)
        add("lm_head input", N * d * s)
    if rg or full:
        add("log-softmax (fp32)", N * V * 4)
        add("labels", N * 8)
        add("loss scalar", 4)
    recompute = max(sum(bt.values()) for bt in blocks) if gradient_checkpointing else 0
    return terms, recompute


def _block_terms(cfg, B: int, T: int, st: _Setup, rg: bool) -> tuple[dict[str, int], bool]:
    """One block's saved tensors given whether its input requires grad; returns the
    terms and whether its output requires grad."""
    N, d, f, H = B * T, cfg.hidden_size, cfg.intermediate_size, cfg.n_heads
    s, terms = st.s, {}
    kv = cfg.n_kv_heads * (d // H)
    width_out = {"q_proj": d, "k_proj": kv, "v_proj": kv, "o_proj": d, "gate_proj": f,
                 "up_proj": f, "down_proj": d}

    def add(name: str, n: int) -> None:
        if n:
            terms[name] = terms.get(name, 0) + n

    def norm(x_rg: bool) -> bool:
        if x_rg:
            add("norm x (fp32)", N * d * 4)
            add("norm rsqrt", N * 4)
        if st.full:
            add("norm y", N * d * s)
        return x_rg or st.full

    def linears(names, k: int, in_rg: bool, what: str) -> dict[str, bool]:
        """Saved inputs of linears sharing one input of width k; their outputs' grad."""
        saved_input = False
        out = {}
        for n in names:
            lora = n in st.targets
            if st.full or (lora and not st.cast):
                saved_input = True
            if lora and st.cast and st.autocast:  # compute-dtype copies of input and A, B
                add("adapter input casts", N * k * s)
                add("adapter A outputs", N * st.r * s)
                add("adapter weight casts", (width_out[n] + (k if in_rg else 0)) * st.r * s)
            elif lora:
                if st.cast:
                    add("adapter input casts", N * k * st.s_adapter)
                add("adapter A outputs", N * st.r * st.s_adapter)
            out[n] = in_rg or st.full or lora
        if saved_input:
            add(what, N * k * s)
        return out

    n_rg = norm(rg)
    qkv = linears(("q_proj", "k_proj", "v_proj"), d, n_rg, "attn-norm output")
    q_rg, k_rg, v_rg = qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]
    if q_rg:
        add("k (H heads)", N * d * s)
    if k_rg:
        add("q", N * d * s)
    scores_rg = q_rg or k_rg
    if scores_rg:
        add("causal mask", T * T)
    if scores_rg or v_rg:
        add("probs", B * H * T * T * s)
    if scores_rg:
        add("v (H heads)", N * d * s)
    attn_rg = scores_rg or v_rg
    o_rg = linears(("o_proj",), d, attn_rg, "o_proj input")["o_proj"]
    x_rg = rg or o_rg
    n2_rg = norm(x_rg)
    gu = linears(("gate_proj", "up_proj"), d, n2_rg, "mlp-norm output")
    g_rg, u_rg = gu["gate_proj"], gu["up_proj"]
    if g_rg:
        add("gate output", N * f * s)
        add("up output", N * f * s)
    if u_rg:
        add("silu output", N * f * s)
    p_rg = g_rg or u_rg
    down_rg = linears(("down_proj",), f, p_rg, "down_proj input")["down_proj"]
    return terms, x_rg or down_rg


@functools.lru_cache(maxsize=32)
def _shapes(cfg) -> tuple[tuple[tuple[str, str, tuple[int, ...]], ...], int]:
    """``((module leaf name, parameter name, shape), ...)`` and the buffers' element count
    of ``cfg``'s model, built on the meta device (nothing allocated)."""
    from labkit import models

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
             autocast: bool = False) -> MemoryBreakdown:
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
        optimizer: one of :data:`OPTIMIZERS` (conventions in the module docstring).
        state_dtype: dtype of AdamW / momentum state; default: the parameter's own
            (``torch.optim`` behaviour). ``"fp32"`` for fp32 moments under 16-bit weights.
        master_weights: add an fp32 copy of every trainable parameter (mixed precision).
        r, targets: LoRA rank and target linears (names of :data:`BLOCK_LINEARS`).
        gradient_checkpointing: keep block inputs only (see :func:`activation_terms`).
        blocksize, double_quant: QLoRA's 4-bit storage (:func:`labkit.quant.quantized_nbytes`).
        autocast: LoRA / QLoRA only: the step runs under ``torch.autocast`` in the compute
            dtype with adapters in ``adapter_dtype``, as on labkit's GPU path
            (see :func:`activation_terms`).

    Returns:
        A :class:`MemoryBreakdown` whose ``terms`` name every term (``"weights/4bit
        linears"``, ``"optimizer/adamw moments"``, ``"activations/probs"``...).

    Raises:
        ValueError: unknown method, dtype or optimizer; batch or seq_len <= 0; a config
            missing a field; a target the estimator does not know.
    """
    from labkit import quant

    cfg = _get_config(config)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    _positive_int("batch", batch)
    _positive_int("seq_len", seq_len)
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
            trainable += [(r * k_in, ad), (d_out * r, ad)]
            key = str(ad).removeprefix("torch.")
            sw[key] = sw.get(key, 0) + r * (k_in + d_out) * _nbytes(ad)
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
        autocast=autocast)
    for k, v in act.items():
        add(f"activations/{k}", v)
    add("recompute/one block", out.recompute)
    out.activations = sum(act.values())
    out.terms = terms
    return out


# --------------------------------------------------------------------------- helpers


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


def fits(breakdown: MemoryBreakdown, device_gib: float) -> bool:
    """Whether the total fits in ``device_gib`` GiB (2^30 bytes) of device memory.

    GPU memory is sold in binary units: an "80 GB" A100 has 80 GiB (``nvidia-smi``: 81920
    MiB), 85.9 * 10^9 bytes, while the estimates count GB = 10^9 bytes. So
    ``fits(b, 80)`` compares ``b.total`` with 80 * 2^30 bytes. Nothing is subtracted for
    the CUDA context, library workspaces or allocator rounding (a few hundred MB that no
    tensor count sees): a fit by less than that is a fit on paper only.
    """
    if not device_gib > 0:
        raise ValueError(f"device_gib must be > 0 (GiB of device memory), got {device_gib!r}")
    return breakdown.total <= device_gib * GiB


def dominant(breakdown: MemoryBreakdown) -> str:
    """The component of :meth:`MemoryBreakdown.stack` that holds the most bytes."""
    st = breakdown.stack()
    return max(st, key=st.get)


def bytes_per_param(breakdown: MemoryBreakdown, n_params: int) -> dict[str, float]:
    """Each component of the stack divided by the model's parameter count."""
    _positive_int("n_params", n_params)
    return {k: v / n_params for k, v in breakdown.stack().items()}
