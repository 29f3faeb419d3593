"""Measuring a real training step: weight and optimizer bytes, saved tensors by hooks.

:func:`measure` runs one step of a real model and counts each component of a
:class:`~labkit.memory.breakdown.MemoryBreakdown` as defined in :mod:`labkit.memory.breakdown`:
the distinct storages of the parameters, 4-bit codes, quantization state and buffers
(:func:`weight_bytes`), the gradients after backward, ``optimizer.state`` after the step
(:func:`optimizer_bytes`), and what autograd saves in the forward (:class:`SavedTensorCounter`).

Imports torch, bitsandbytes only for its optimizers (through :mod:`labkit._deps`),
:mod:`labkit.models` (the block class), :mod:`labkit.train` (the default loss) and
:mod:`labkit.memory.breakdown`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# isort: split
import torch
import torch.nn as nn

from labkit.memory.breakdown import MemoryBreakdown
from labkit.models import Block
from labkit.train import lm_loss, make_optimizer

# --------------------------------------------------------------------------- storages and weights


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


# --------------------------------------------------------------------------- optimizer state


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the distinct tensors in ``opt.state`` (moments, step counters, 8-bit maps)."""
    seen, n = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and _storage_key(v) not in seen:
                seen.add(_storage_key(v))
                n += _storage_nbytes(v)
    return n


# --------------------------------------------------------------------------- one step


def _default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return lm_loss(logits, labels)


def measure(model: nn.Module, batch, optimizer="adamw", *, lr: float = 1e-3,
            gradient_checkpointing: bool | None = None,
            loss_fn: Callable | None = None) -> MemoryBreakdown:
    """Run one real training step and count what it holds, by component.

    The step: ``loss_fn(model(input_ids), labels).backward(); optimizer.step()``. The
    model is changed (one optimizer step). Gradients are counted after backward, the
    optimizer state after the step, activations with saved-tensor hooks during the forward
    (see :mod:`labkit.memory.breakdown` for the definitions). With gradient checkpointing on,
    ``recompute`` re-runs each block's forward alone under the hooks (what the backward
    recomputes) and keeps the largest.

    Args:
        model: a :class:`labkit.models.LlamaLM` (full, with LoRA, or with a 4-bit base);
            any causal LM works for everything but ``recompute``.
        batch: ``(input_ids, labels)``, both (B, T) int64, as ``Task.batch`` returns them.
        optimizer: a name in :data:`labkit.train.OPTIMIZERS` (``"sgd"`` is plain SGD),
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
    # the one optimizer registry (labkit.train); bitsandbytes' own classes even on a CPU
    opt = (optimizer if isinstance(optimizer, torch.optim.Optimizer) else
           make_optimizer(model, optimizer, lr=lr, weight_decay=0.0, cpu_fallback=False))
    loss_fn = loss_fn or _default_loss
    old_ckpt = getattr(model, "gradient_checkpointing", None)
    if gradient_checkpointing is not None:
        if old_ckpt is None:
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing switch")
        model.gradient_checkpointing = gradient_checkpointing
    ckpt = bool(getattr(model, "gradient_checkpointing", False)) or any(
        getattr(m, "_labkit_checkpoint", False) for m in model.modules())  # a wrapped block

    out = MemoryBreakdown(label="measured")
    out.weights, out.weights_by_dtype = weight_bytes(model)
    exclude = model_storages(model)
    block_inputs: list[tuple[nn.Module, torch.Tensor]] = []
    handles = []
    if ckpt:
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
