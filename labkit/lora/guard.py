"""Guards: what keeps a bad input from damaging a model.

Every labkit operation that changes a model either validates all of its inputs before the
first change, or runs under :func:`unchanged_on_error`, which puts the model back as it was
when anything raises: the same modules in the same places (so the same parameters, bit for
bit), the same module classes, the same ``requires_grad`` flags, the same adapters. Both, as
a rule: the checks give the clear message, the guard covers what no check foresaw.

* :func:`_check_hparams`: a LoRA rank, alpha and dropout that make sense (finite, in range);
  an infinite alpha would make every output and every merged weight NaN or inf.
* :func:`_check_adapter_name`: a name that can be a module attribute (``lora_A.<name>``).
* :func:`_check_finite`: refuse a tensor that holds NaN or inf before it is written anywhere
  (e.g. an adapter about to be merged into its base weight), naming what and where.
* :func:`_check_mergeable`: every layer's merge checks (the finite update among them), run
  before the first weight changes.
* :func:`unchanged_on_error`: the snapshot-and-restore context manager. It keeps references,
  not copies: an operation that replaces modules (injecting adapters) leaves the old ones
  untouched, so putting them back restores the model exactly. It does not undo in-place
  writes into existing tensors: operations that write in place (merging, loading into an
  existing adapter) validate everything first and write last.

Imports: torch (through ``labkit._deps``) only; no other labkit module.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

from labkit._deps import torch  # one clear line when torch is missing

from torch import nn


def _check_hparams(r, alpha, dropout) -> None:
    """Reject bad hyper-parameters with a message that names the fix."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive int (e.g. r=8), got r={r!r}")
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0
            or not math.isfinite(alpha)):
        raise ValueError(
            "LoRA alpha must be a positive number, finite (commonly alpha = r or 2 * r), "
            f"got alpha={alpha!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must lie in [0, 1) (0.0 = off), got dropout={dropout!r}")


def _check_adapter_name(name) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"adapter name must be a Python identifier like 'default', got {name!r}")


def _check_finite(t: torch.Tensor, what: str, fix: str) -> None:
    """Raise a ``ValueError`` saying how many NaN / inf ``what`` holds, and ``fix``."""
    if bool(torch.isfinite(t).all()):
        return
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    raise ValueError(f"{what} holds {n_nan} NaN and {n_inf} inf values; {fix}")


def _check_mergeable(layers: list[tuple[str, nn.Module]]) -> None:
    """Every check ``LoRALayer.merge`` makes, on every ``(path, layer)``, before any weight
    changes (a base without a dense weight, an update with NaN or inf: named by its path)."""
    for path, lay in layers:
        lay._mergeable(where=f"layer {path!r}")


def _copied(attrs: dict) -> dict:
    """A module's attributes with their containers (sub-module, parameter, buffer, hook and
    adapter dicts; sets; lists) copied one level deep, so later changes do not reach them."""
    return {k: copy.copy(v) if isinstance(v, (dict, set, list)) else v for k, v in attrs.items()}


class ModelSnapshot:
    """What a model is made of, by reference: restore it with :meth:`restore`."""

    def __init__(self, model: nn.Module):
        self.modules = [(m, type(m), _copied(m.__dict__)) for m in model.modules()]
        self.grads = [(p, p.requires_grad) for p in model.parameters()]

    def restore(self) -> None:
        for mod, cls, state in self.modules:
            if type(mod) is not cls:  # e.g. a LoRALinear switched to a QLoRALinear
                mod.__class__ = cls
            mod.__dict__.clear()
            mod.__dict__.update(_copied(state))  # copied again: a snapshot restores twice
        for p, flag in self.grads:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module) -> Iterator[ModelSnapshot]:
    """``with unchanged_on_error(model): ...``: if the block raises (anything, Ctrl-C
    included), ``model`` is restored to its state at the ``with`` and the error goes on."""
    snap = ModelSnapshot(model)
    try:
        yield snap
    except BaseException:
        snap.restore()
        raise
