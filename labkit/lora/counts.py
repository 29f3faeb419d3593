"""Every parameter count in labkit, each named for what it counts.

- :func:`adapter_params`: one rank-``r`` adapter on a ``d x k`` weight, ``r * (d + k)``.
- :func:`model_params`: a built model's total and trainable parameters, as PEFT counts them
  (:class:`ParamCount`; :func:`param_summary` is PEFT's one-line summary of it).
- :func:`planned_adapter_params`: what ``add_lora`` would add, from layer shapes alone
  (:class:`LoRAEstimate`; nothing is allocated).
- :func:`config_params`: the exact size of a model config (built on the meta device).
- :func:`param_rows` / :func:`param_table`: per-module totals, repeated blocks folded.

Nothing heavy is imported at the top: ``adapter_params`` and the dataclasses work without
torch. The functions that need the LoRA layers, target matching or :mod:`labkit.models`
import them when called (which also keeps ``inject`` -> ``counts`` a one-way import).

Imports: ``labkit.lora.guard``, ``layers``, ``inject`` and ``labkit.models``, each
deferred to the function that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing this module stays torch-free
    import torch
    from torch import nn

    from labkit.models import ModelConfig


@dataclass
class ParamCount:
    """Parameter totals. ``percent`` is trainable / total, as PEFT prints it."""

    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        """PEFT's ``print_trainable_parameters`` line, number for number."""
        return (f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
                f"|| trainable%: {self.percent:.4f}")

    def __str__(self) -> str:
        return self.summary()


def adapter_params(d: int, k: int, r: int) -> int:
    """Trainable numbers of one rank-``r`` adapter on a ``d x k`` weight: ``r * (d + k)``.

    ``A`` is ``r x k`` and ``B`` is ``d x r``. Example: ``adapter_params(1024, 1024, 8)``
    is 16,384, against 1,048,576 for the full weight.

    Raises:
        ValueError: any argument is not a positive int.
    """
    for name, v in (("d", d), ("k", k), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"adapter_params needs positive ints; got {name}={v!r}")
    return r * (d + k)


def _numel(p: torch.Tensor) -> int:
    """Logical parameter count. bitsandbytes packs two 4-bit weights per byte of a
    ``Params4bit`` tensor, so its ``numel`` is half (per storage byte) the weights it
    holds; count them as PEFT does, so our totals equal PEFT's."""
    n = p.numel()
    if type(p).__name__ == "Params4bit":
        n *= 2 * p.element_size()
    return n


def model_params(model: nn.Module) -> ParamCount:
    """Total and trainable parameters (shared tensors counted once), as PEFT counts them."""
    total = trainable = 0
    for _, p in model.named_parameters():
        total += _numel(p)
        trainable += _numel(p) if p.requires_grad else 0
    return ParamCount(total, trainable)


def param_summary(model: nn.Module) -> str:
    """``trainable params: 1,280 || all params: 20,896 || trainable%: 6.1256`` (PEFT's line)."""
    return model_params(model).summary()


@dataclass
class ParamRow:
    module: str
    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def param_rows(model: nn.Module, depth: int | None = None) -> list[ParamRow]:
    """Parameters per module, repeated blocks folded together.

    Layer indices become ``*`` (``model.layers.*.self_attn.q_proj`` sums all layers);
    a LoRA layer's adapters count with it. ``depth`` cuts names to that many parts
    (``depth=1``: one row per top-level child). Rows keep the model's order.
    """
    from labkit.lora.inject import lora_layers  # deferred: inject imports this module

    lora = {n for n, _ in lora_layers(model)}
    rows: dict[str, ParamRow] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")[:-1]
        for i in range(len(parts), 0, -1):  # charge adapter tensors to their LoRA layer
            if ".".join(parts[:i]) in lora:
                parts = parts[:i]
                break
        parts = ["*" if s.isdigit() else s for s in parts][:depth] or ["(root)"]
        row = rows.setdefault(".".join(parts), ParamRow(".".join(parts), 0, 0))
        row.total += _numel(p)
        row.trainable += _numel(p) if p.requires_grad else 0
    return list(rows.values())


def param_table(model: nn.Module, depth: int | None = None) -> str:
    """:func:`param_rows` as an aligned text table with a total line."""
    rows, c = param_rows(model, depth), model_params(model)
    width = max([len(r.module) for r in rows] + [6])
    head = f"{'module':<{width}}  {'total':>13}  {'trainable':>13}  {'frozen':>13}"
    lines = [head, "-" * len(head)]
    lines += [f"{r.module:<{width}}  {r.total:>13,d}  {r.trainable:>13,d}  {r.frozen:>13,d}"
              for r in rows]
    lines += ["-" * len(head),
              f"{'total':<{width}}  {c.total:>13,d}  {c.trainable:>13,d}  {c.frozen:>13,d}"]
    return "\n".join(lines)


@dataclass
class LoRAEstimate:
    """LoRA parameters that ``add_lora(model, targets, r=r)`` would add, counted not built."""

    trainable: int  # the adapters' numbers
    base: int  # the model's own parameters
    layers: int  # how many layers get an adapter
    by_target: dict[str, int]  # adapter numbers per layer name (last name part)

    @property
    def total(self) -> int:
        return self.base + self.trainable

    @property
    def percent(self) -> float:
        """Trainable share of all parameters after injection (PEFT's ``trainable%``)."""
        return 100.0 * self.trainable / self.total


def planned_adapter_params(model: nn.Module, targets, r: int,
                           use_dora: bool = False) -> LoRAEstimate:
    """Count the adapter parameters for ``targets`` at rank ``r`` from layer shapes alone.

    Nothing is allocated, so a 70B model built on the meta device
    (``with torch.device("meta"): model = Model(config)``) is counted in milliseconds.
    Each linear ``d x k`` adds ``r * (d + k)``; each embedding ``V x D`` adds ``r * (V + D)``.
    With ``use_dora`` each linear adds its magnitude vector too, ``d`` more (DoRA,
    :mod:`labkit.lora.dora`): ``r * (d + k) + d``.

    Raises:
        ValueError: as :func:`find_targets`; ``use_dora`` with an embedding among the
            targets (labkit's DoRA is for linear layers).
    """
    # deferred: torch and the layers stay out of a plain ``import labkit.lora.counts``,
    # and inject imports this module
    from torch import nn

    from labkit.lora.guard import _check_hparams
    from labkit.lora.inject import find_targets
    from labkit.lora.layers import LoRAEmbedding

    _check_hparams(r, 1, 0.0)
    by_target: dict[str, int] = {}
    hits = find_targets(model, targets)
    for name, mod in hits:
        if isinstance(mod, (nn.Embedding, LoRAEmbedding)):
            if use_dora:
                raise ValueError(f"use_dora=True: {name!r} is an embedding, and labkit's DoRA "
                                 "is for linear layers; leave it out of the targets")
            n = adapter_params(mod.num_embeddings, mod.embedding_dim, r)
        else:
            n = adapter_params(mod.out_features, mod.in_features, r)
            n += mod.out_features if use_dora else 0  # DoRA's magnitude m, (d,)
        key = name.rsplit(".", 1)[-1]
        by_target[key] = by_target.get(key, 0) + n
    return LoRAEstimate(sum(by_target.values()), model_params(model).total, len(hits), by_target)


def config_params(config: str | ModelConfig) -> int:
    """Exact parameter count of a model config, by building it on the meta device and summing.

    ``config`` is a name known to :func:`labkit.models.get_config` (``"llama-2-7b"``) or a
    ``ModelConfig``. Nothing is allocated, so a 70B config is counted in well under a second.
    """
    from labkit import models  # deferred: needs torch; counts imports none at the top

    model = models.build(config, device="meta")
    return sum(p.numel() for p in model.parameters())
