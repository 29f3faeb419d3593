"""The one optimizer registry: optimizers by name, and building one over the trainable
parameters.

Only parameters with ``requires_grad=True`` reach the optimizer, so a LoRA model whose base
is frozen trains its adapters only, and the optimizer holds state for them alone.
Optimizers are chosen by name from :data:`OPTIMIZERS` (``"adamw"``, ``"sgd"``,
``"sgd_momentum"``, ``"paged_adamw"``, ``"adamw8bit"``, ``"adamw_loraplus"``; add more with
:func:`register_optimizer`) or passed to :func:`make_optimizer` / :func:`labkit.train.train`
as a factory. A factory is called in one of two ways, chosen by its signature:

    factory(params, lr=..., weight_decay=...)                     # tensors only
    factory(params, lr=..., weight_decay=..., named_params=...)   # and their names

``params`` is the list of trainable parameters. A factory that declares a parameter named
``named_params`` also receives ``[(name, parameter), ...]``, the same parameters in the
same order, named as ``model.named_parameters()`` names them (DDP's ``module.`` prefix
looked through, as in a checkpoint), so that it can group parameters by name::

    def adamw_no_decay_on_norms(params, lr, weight_decay, named_params):
        norms = [p for n, p in named_params if "norm" in n]
        rest = [p for n, p in named_params if "norm" not in n]
        return torch.optim.AdamW([{"params": rest}, {"params": norms, "weight_decay": 0.0}],
                                 lr=lr, weight_decay=weight_decay)

    register_optimizer("adamw-nd", adamw_no_decay_on_norms)

Every other factory (``**kwargs`` included) is called with ``params``, ``lr`` and
``weight_decay`` only, as before. Param groups may have learning rates of their own:
:func:`labkit.train.train` multiplies each group's ``lr`` by the schedule (warm-up, cosine),
keeping the ratio to ``lr`` the group was built with.

LoRA+ (Hayou et al., 2024, arXiv:2402.12354, section 4): ``B`` learns ``ratio`` times faster
than ``A`` (the paper: ``ratio`` about 2^4 = 16), since with ``B = 0`` at the start the two
factors play different roles in a wide network. :func:`loraplus` builds the factory,
:data:`OPTIMIZERS` holds it as ``"adamw_loraplus"`` (ratio 16). Its param groups are those
of PEFT's ``create_loraplus_optimizer``: ``A`` (and every other matrix) at ``lr``; ``B`` and
every vector (biases, DoRA's magnitude) at ``ratio * lr``; embedding adapters at
``lr_embedding`` (PEFT's default ``1e-6``); biases and norm weights without weight decay.

Imports: torch, and :mod:`labkit._deps` (bitsandbytes on first use of a bnb optimizer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit._api import warn_once

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _sgd_momentum(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


#: Optimizer factories by name: ``factory(params, lr=, weight_decay=) -> Optimizer``, or
#: with a ``named_params`` parameter also the names (see the module docstring). "sgd" is
#: torch's plain SGD (no state), "sgd_momentum" keeps one momentum buffer per parameter:
#: :mod:`labkit.memory` counts their state under the same names.
OPTIMIZERS: dict[str, OptimizerFactory] = {"adamw": _adamw, "sgd": _sgd,
                                           "sgd_momentum": _sgd_momentum}


# --- bitsandbytes optimizers (QLoRA's GPU path; owned by the QLoRA issue) -----------------
def _bnb_optimizer(name: str, cls_name: str) -> OptimizerFactory:
    """A factory for ``bitsandbytes.optim.<cls_name>`` on CUDA, torch's AdamW elsewhere.

    Paged AdamW keeps its state in CUDA unified memory, which the driver pages out to CPU
    RAM when the GPU runs short (QLoRA, section 3); 8-bit AdamW stores the two moments in
    8 bits. Neither buys anything on the CPU, so there the same code gets torch's AdamW and
    says so once per process.
    """

    def factory(params, lr: float, weight_decay: float, *, cpu_fallback: bool = True
                ) -> torch.optim.Optimizer:
        # cpu_fallback=False: bitsandbytes' own class even on a CPU (labkit.memory.measure
        # counts *its* state; paging itself needs CUDA, off it bnb keeps the state unpaged).
        params = list(params)
        if (params and params[0].device.type == "cuda") or not cpu_fallback:
            from labkit._deps import import_bnb

            return getattr(import_bnb().optim, cls_name)(params, lr=lr, weight_decay=weight_decay)
        warn_once(f"train:cpu-fallback:{name}",
                  f"optimizer {name!r} needs a CUDA GPU (bitsandbytes {cls_name}); on the "
                  f"{params[0].device.type if params else 'cpu'} it is torch's AdamW instead "
                  "(same algorithm, 32-bit state)", UserWarning, stacklevel=2)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    factory.bnb_class = cls_name

    return factory


OPTIMIZERS["paged_adamw"] = _bnb_optimizer("paged_adamw", "PagedAdamW")
OPTIMIZERS["adamw8bit"] = _bnb_optimizer("adamw8bit", "AdamW8bit")


def loraplus(ratio: float = 16.0, lr_embedding: float = 1e-6, optimizer_cls=None
             ) -> OptimizerFactory:
    """A LoRA+ factory: ``optimizer_cls`` (default ``torch.optim.AdamW``) with ``B``'s learning
    rate ``ratio`` times ``A``'s (module docstring; PEFT's ``create_loraplus_optimizer``).

    ``lr_embedding`` is the absolute rate of embedding adapters at the peak ``lr`` (the loop
    scales it with the schedule like every group).

    Raises:
        ValueError: ``ratio`` or ``lr_embedding`` not a positive finite number.
    """
    for name, v in (("ratio", ratio), ("lr_embedding", lr_embedding)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
            raise ValueError(f"loraplus: {name} must be a positive number, got {v!r}")
    cls = optimizer_cls or torch.optim.AdamW

    def factory(params, lr: float, weight_decay: float, named_params) -> torch.optim.Optimizer:
        groups = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
        for name, p in named_params:
            if "lora_embedding_" in name:
                groups["embedding"].append(p)
            elif "lora_B" in name or p.ndim == 1:  # B, biases, norms, DoRA's magnitude
                no_decay = name.endswith("bias") or "norm" in "".join(name.split(".")[-2:-1])
                groups["B_no_decay" if no_decay else "B"].append(p)
            else:
                groups["A"].append(p)
        rates = {"A": lr, "embedding": lr_embedding, "B": lr * ratio, "B_no_decay": lr * ratio}
        return cls([{"params": ps, "lr": rates[g], "name": f"loraplus {g}",
                     "weight_decay": 0.0 if g == "B_no_decay" else weight_decay}
                    for g, ps in groups.items()], lr=lr, weight_decay=weight_decay)

    factory.loraplus_ratio = ratio
    return factory


OPTIMIZERS["adamw_loraplus"] = loraplus()


def register_optimizer(name: str, factory: OptimizerFactory, overwrite: bool = False) -> None:
    """Make ``train(..., optimizer=name)`` use ``factory`` (e.g. bitsandbytes' paged AdamW).

    ``factory(params, lr=, weight_decay=)``, or ``factory(params, lr=, weight_decay=,
    named_params=)`` to receive the parameters' names too (see the module docstring).

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    if name in OPTIMIZERS and not overwrite:
        raise ValueError(f"optimizer {name!r} is already registered; pass overwrite=True")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    OPTIMIZERS[name] = factory


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that will train: those with ``requires_grad=True``."""
    return [p for p in model.parameters() if p.requires_grad]


def _named_trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters by name, DDP's ``module.`` wrapper looked through, so that a
    checkpoint written under torchrun resumes in one process and the other way round."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _takes_names(factory: OptimizerFactory) -> bool:
    """Whether ``factory`` declares a ``named_params`` parameter (by name, not ``**kwargs``:
    an old factory that forwards ``**kwargs`` to a torch optimizer must not receive it)."""
    try:
        param = inspect.signature(factory).parameters.get("named_params")
    except (TypeError, ValueError):  # no signature to read (some builtins): the old call
        return False
    return param is not None and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)


def make_optimizer(model: torch.nn.Module, optimizer: str | OptimizerFactory = "adamw",
                   lr: float = 1e-3, weight_decay: float = 0.0, *, cpu_fallback: bool = True
                   ) -> torch.optim.Optimizer:
    """Build an optimizer over the trainable parameters only.

    Args:
        model: its parameters with ``requires_grad=True`` are optimized.
        optimizer: a name in :data:`OPTIMIZERS`, or a factory ``(params, lr=,
            weight_decay=)``; a factory with a ``named_params`` parameter also gets the
            ``(name, parameter)`` pairs.
        lr, weight_decay: passed to the factory.
        cpu_fallback: bitsandbytes' optimizers become torch's AdamW off CUDA (saying so
            once); False keeps bitsandbytes' class (to measure its state on a CPU).

    Raises:
        ValueError: nothing is trainable, or an unknown optimizer name (lists the known).
    """
    named = _named_trainable(model)
    params = [p for _, p in named]
    if not params:
        raise ValueError(
            "the model has no trainable parameters (every requires_grad is False); unfreeze "
            "some, or add LoRA adapters, before training"
        )
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)} "
                "(or pass a factory(params, lr=, weight_decay=))"
            )
        factory = OPTIMIZERS[optimizer]
    elif callable(optimizer):
        factory = optimizer
    else:
        raise TypeError(f"optimizer must be a name or a factory, got {type(optimizer).__name__}")
    extra = {} if cpu_fallback or not hasattr(factory, "bnb_class") else {"cpu_fallback": False}
    if _takes_names(factory):
        extra["named_params"] = named
    return factory(params, lr=lr, weight_decay=weight_decay, **extra)
