"""LoRA: Low-Rank Adaptation of a frozen model (Hu et al., 2021, arXiv:2106.09685).

A frozen weight ``W`` (shape ``(d, k)``: ``d`` outputs, ``k`` inputs) gets a trainable
low-rank update (paper, section 4.1)::

    h = W x + s * B A x        A: (r, k), B: (d, r), r << min(d, k), s = alpha / r

Only ``A`` and ``B`` train: ``r * (d + k)`` numbers instead of ``d * k``. For a
4096 x 4096 projection and ``r = 8`` that is 65,536 instead of 16,777,216 (0.4 %).
``B`` starts at zero, so before training the adapted model is exactly the base model.

This module holds the layers (:class:`LoRALinear`, :class:`LoRAEmbedding`), injection
into any ``nn.Module`` by target names (:func:`add_lora`), merging, adapter switching and
the parameter accounting every lesson prints. Saving and loading adapters in PEFT's file
format lives in :mod:`labkit.adapters`.

Names follow PEFT on purpose (``base_layer``, ``lora_A``, ``lora_B``,
``lora_embedding_A``, ``lora_embedding_B``): a state-dict key here is a key there, so
adapter files move between the two libraries unchanged.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from labkit._deps import torch  # one clear line when torch is missing

import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoRAConfig", "LoRALayer", "LoRALinear", "LoRAEmbedding", "LoRAReport", "LoRAEstimate",
    "ParamCount", "ParamRow", "lora_param_count", "add_lora", "lora_layers", "find_targets",
    "set_adapter", "enable_adapters", "disable_adapters", "adapters_disabled",
    "delete_adapter", "merge_lora", "unmerge_lora", "merged_state_dict", "unload_lora",
    "get_adapter_params", "set_trainable_params", "count_params", "param_summary",
    "param_rows", "param_table", "count_lora_params",
]

BIAS_MODES = ("none", "all", "lora_only")


# --------------------------------------------------------------------------- checks


def _check_hparams(r, alpha, dropout) -> None:
    """Reject bad hyper-parameters with a message that names the fix."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive int (e.g. r=8), got r={r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(
            "LoRA alpha must be a positive number (commonly alpha = r or 2 * r), "
            f"got alpha={alpha!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must lie in [0, 1) (0.0 = off), got dropout={dropout!r}")


def lora_param_count(d: int, k: int, r: int) -> int:
    """Trainable numbers of one rank-``r`` adapter on a ``d x k`` weight: ``r * (d + k)``.

    ``A`` is ``r x k`` and ``B`` is ``d x r``. Example: ``lora_param_count(1024, 1024, 8)``
    is 16,384, against 1,048,576 for the full weight.

    Raises:
        ValueError: any argument is not a positive int.
    """
    for name, v in (("d", d), ("k", k), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"lora_param_count needs positive ints; got {name}={v!r}")
    return r * (d + k)


# --------------------------------------------------------------------------- layers


def _is_conv1d(mod: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer, weight ``(in, out)``."""
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(mod, "nf", None) == w.shape[1])


class LoRALayer(nn.Module):
    """What every LoRA layer shares: named adapters, switching, enable/disable, merging.

    Several adapters may live on one base layer (a dict per hyper-parameter, keyed by
    adapter name, as in PEFT); one of them is active at a time. Subclasses create the
    adapter tensors (:meth:`_create_adapter`), compute ``delta_weight`` and run forward.

    Merging adds ``delta_weight()`` into the base weight through two hooks,
    :meth:`base_weight` and :meth:`_write_base_weight`. A base that is not a dense float
    weight (the 4-bit base of QLoRA) overrides both: dequantize in ``base_weight``, and in
    ``_write_base_weight`` re-quantize or raise a clear error.
    """

    adapter_kinds: tuple[str, ...] = ()  # names of the ModuleDict/ParameterDict attributes
    fan_in_fan_out = False  # True when the base stores its weight as (in, out): GPT-2's Conv1D

    def __init__(self, base: nn.Module):
        super().__init__()
        if isinstance(base, LoRALayer):
            raise TypeError(
                "base is already a LoRA layer; add a second adapter with "
                "layer.add_adapter(name, r=..., alpha=...) instead of wrapping it again"
            )
        self.base_layer = base
        for p in base.parameters():  # the whole point: the base stays frozen
            p.requires_grad_(False)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.active_adapter: str | None = None
        self.adapters_enabled = True
        self.merged_adapter: str | None = None

    # -- bookkeeping ---------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, for code that reads ``layer.weight`` (tied heads)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    @property
    def merged(self) -> bool:
        return self.merged_adapter is not None

    def _adapter_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Adapters sit on the base's device; float32 unless the base is float64.

        Half-precision bases (fp16/bf16) and 4-bit bases still get float32 adapters, as
        PEFT does by default: tiny updates to tiny matrices need the mantissa bits.
        """
        tensors = list(self.base_layer.parameters()) + list(self.base_layer.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        return device, dtype

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False) -> None:
        """Create adapter ``name`` (``A``, ``B``, scaling) and make it the active one.

        Scaling ``s = alpha / r`` (paper, section 4.1), or ``alpha / sqrt(r)`` with rsLoRA
        (Kalajdzievski, 2023), which keeps the update's size stable as ``r`` grows.

        Raises:
            ValueError: bad ``r`` / ``alpha`` / ``dropout``, or ``name`` already exists here.
        """
        _check_hparams(r, alpha, dropout)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"adapter name must be a Python identifier like 'default', got {name!r}")
        if name in self.r:
            raise ValueError(
                f"this layer already has a LoRA adapter named {name!r}; pass another "
                "adapter_name to add a second adapter, or delete_adapter() the old one first"
            )
        self._create_adapter(name, r, dropout)  # first: if it refuses, nothing has changed
        self.r[name] = r
        self.lora_alpha[name] = alpha
        self.use_rslora[name] = bool(use_rslora)
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        if self.active_adapter is None or not self.merged:
            self.active_adapter = name

    def set_adapter(self, name: str | None) -> None:
        """Make adapter ``name`` the one forward uses (``None``: none of them)."""
        if name is not None and name not in self.r:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        if self.merged and name != self.merged_adapter:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged into the base weight; "
                "unmerge() before switching adapters"
            )
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        if name not in self.r:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        if self.merged_adapter == name:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge() before deleting it")
        for kind in self.adapter_kinds:
            del getattr(self, kind)[name]
        for d in (self.r, self.lora_alpha, self.scaling, self.use_rslora):
            del d[name]
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.r), None)

    def enable_adapters(self, enabled: bool = True) -> None:
        """Switch the active adapter on or off (off: the layer is its base layer)."""
        if not enabled and self.merged:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is merged into the base weight, so it cannot "
                "be switched off; unmerge() first"
            )
        self.adapters_enabled = bool(enabled)

    def _use_adapter(self) -> bool:
        return (self.adapters_enabled and self.active_adapter is not None
                and self.merged_adapter is None)

    # -- merging -------------------------------------------------------------------
    def delta_weight(self, name: str | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def base_weight(self) -> torch.Tensor:
        """The base layer's dense weight, laid out like :meth:`delta_weight`.

        This is the extension point for bases that are not a dense float weight: override
        it (and :meth:`_write_base_weight`) to dequantize, or to raise a clear error.
        """
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(
                f"cannot merge into a {type(self.base_layer).__name__} base: it has no dense "
                "float weight. Override base_weight() and _write_base_weight() for this base "
                "type (dequantize it), or keep the adapter unmerged."
            )
        return w.detach().T if self.fan_in_fan_out else w.detach()

    def _write_base_weight(self, new: torch.Tensor) -> None:
        self.base_layer.weight.data.copy_(new.T if self.fan_in_fan_out else new)

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the active one) into the base: ``W += s * B A``.

        Afterwards forward costs what the base layer costs. :meth:`unmerge` subtracts the
        same product, so the round trip is exact up to float rounding.

        Raises:
            RuntimeError: an adapter is merged already, or adapters are disabled.
        """
        name = self.active_adapter if name is None else name
        if self.merged:
            raise RuntimeError(
                f"adapter {self.merged_adapter!r} is already merged into this layer; "
                "unmerge() before merging again"
            )
        if name is None or name not in self.r:
            raise RuntimeError(
                f"no adapter to merge (asked {name!r}, layer has {self.adapter_names})")
        if not self.adapters_enabled:
            raise RuntimeError(
                "adapters are disabled on this layer; enable_adapters() before merging")
        w = self.base_weight()
        self._write_base_weight(w + self.delta_weight(name).to(w.dtype))
        self.merged_adapter = name
        self.active_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter from the base weight again (inverse of :meth:`merge`)."""
        if not self.merged:
            raise RuntimeError("nothing to unmerge: no adapter is merged into this layer")
        w = self.base_weight()
        self._write_base_weight(w - self.delta_weight(self.merged_adapter).to(w.dtype))
        self.merged_adapter = None

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, alpha={self.lora_alpha[n]}, scaling={self.scaling[n]:.4g}"
                 for n in self.r]
        return (f"adapters=[{'; '.join(parts)}], active={self.active_adapter!r}, "
                f"merged={self.merged_adapter!r}")


class LoRALinear(LoRALayer):
    """A frozen linear map plus a low-rank trainable update.

    ``y = base(x) + s * B(A(dropout(x)))``, with ``x: (..., k)``, ``A: (r, k)``,
    ``B: (d, r)`` and ``y: (..., d)``; ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
    Example shapes for ``k = d = 512``, ``r = 8``: ``x (2, 16, 512) -> A x (2, 16, 8)
    -> B A x (2, 16, 512)``.

    Initialisation as in the paper and PEFT: ``A`` Kaiming-uniform (``a = sqrt(5)``, the
    ``nn.Linear`` default), ``B`` zeros, so ``B A = 0`` and an untrained adapter changes
    nothing. The base's bias stays in the base (frozen unless ``add_lora(bias=...)``).

    ``base`` may be any module mapping ``(..., in_features) -> (..., out_features)`` that
    has ``in_features`` / ``out_features`` attributes (e.g. a 4-bit linear); merging then
    needs :meth:`base_weight` to work for it (see :class:`LoRALayer`). GPT-2's ``Conv1D``
    (a linear layer storing its weight transposed, ``(in, out)``) works too: PEFT calls
    that ``fan_in_fan_out``; only merging needs to know.

    Args:
        base: the layer to adapt; its parameters are frozen.
        r: rank, > 0.
        alpha: scaling numerator, > 0.
        dropout: dropout on the adapter's input, in [0, 1).
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        adapter_name: the first adapter's name.
    """

    adapter_kinds = ("lora_A", "lora_B", "lora_dropout")

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = "default"):
        super().__init__(base)
        k, d = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if _is_conv1d(base):
            (k, d), self.fan_in_fan_out = base.weight.shape, True
        if not (isinstance(k, int) and isinstance(d, int)):
            raise TypeError(
                f"LoRALinear needs a base with int in_features/out_features (like nn.Linear); "
                f"got {type(base).__name__}"
            )
        self.in_features, self.out_features = k, d
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora)

    def _create_adapter(self, name: str, r: int, dropout: float) -> None:
        device, dtype = self._adapter_device_dtype()
        A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))  # A: (r, k), random
            nn.init.zeros_(B.weight)  # B: (d, r), zero -> B A = 0 at the start
        self.lora_A[name], self.lora_B[name] = A, B
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def A(self) -> torch.Tensor:
        """The active adapter's ``A`` weight, shape ``(r, in_features)``."""
        return self.lora_A[self.active_adapter].weight

    @property
    def B(self) -> torch.Tensor:
        """The active adapter's ``B`` weight, shape ``(out_features, r)``."""
        return self.lora_B[self.active_adapter].weight

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``s * B @ A``, shape ``(out_features, in_features)`` like ``nn.Linear.weight``."""
        name = self.active_adapter if name is None else name
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (..., k) -> (..., d): the frozen path, W x (+ bias)
        if not self._use_adapter():  # disabled, no active adapter, or merged into W already
            return out
        name = self.active_adapter
        A = self.lora_A[name]
        # Adapters may be float32 under a bf16 or 4-bit base: compute in their dtype.
        h = self.lora_dropout[name](x.to(A.weight.dtype))
        # (..., k) -A-> (..., r) -B-> (..., d): never forms the d x k product B A.
        return out + (self.lora_B[name](A(h)) * self.scaling[name]).to(out.dtype)


class LoRAEmbedding(LoRALayer):
    """A frozen ``nn.Embedding`` plus a low-rank update of its table.

    The table ``E`` is ``(num_embeddings, dim)``; the update is ``s * (B A)^T`` with
    ``A: (r, num_embeddings)`` and ``B: (dim, r)`` (PEFT's shapes). Looking up token ``t``
    adds ``s * B A[:, t]``: the lookup picks column ``t`` of ``A`` (an ``r``-vector) and
    ``B`` lifts it to ``dim``.

    Initialisation follows PEFT: ``A`` zeros and ``B`` normal, so again ``B A = 0`` at the
    start. The roles swap relative to :class:`LoRALinear` because ``A`` is indexed by
    token: the first gradient reaches only the columns of ``A`` for tokens in the batch.
    No dropout: the input is token ids, not features, so ``dropout`` must be 0 here (PEFT
    silently skips it; ``add_lora`` passes 0 to embeddings and says so in its report).
    """

    adapter_kinds = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base: nn.Embedding, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_name: str = "default"):
        super().__init__(base)
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora)

    def _create_adapter(self, name: str, r: int, dropout: float) -> None:
        if dropout > 0:
            raise ValueError(f"dropout={dropout} does not apply to an embedding (its input is "
                             "token ids, not features); use dropout=0.0")
        device, dtype = self._adapter_device_dtype()
        A = torch.zeros(r, self.num_embeddings, device=device, dtype=dtype)
        B = torch.empty(self.embedding_dim, r, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.normal_(B)
        self.lora_embedding_A[name] = nn.Parameter(A)
        self.lora_embedding_B[name] = nn.Parameter(B)

    @property
    def A(self) -> torch.Tensor:
        return self.lora_embedding_A[self.active_adapter]

    @property
    def B(self) -> torch.Tensor:
        return self.lora_embedding_B[self.active_adapter]

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``s * (B @ A)^T``, shape ``(num_embeddings, embedding_dim)`` like the table."""
        name = self.active_adapter if name is None else name
        B, A = self.lora_embedding_B[name], self.lora_embedding_A[name]
        return self.scaling[name] * (B @ A).T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(ids)
        if not self._use_adapter():
            return out
        name, base = self.active_adapter, self.base_layer
        # Look up columns of A: (..., r). padding_idx etc. behave as in the base lookup.
        a = F.embedding(ids, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                        base.norm_type, base.scale_grad_by_freq, base.sparse)
        return out + ((a @ self.lora_embedding_B[name].T) * self.scaling[name]).to(out.dtype)


# --------------------------------------------------------------------------- injection


@dataclass
class LoRAConfig:
    """One adapter's settings; field names are PEFT's ``LoraConfig`` names.

    ``target_modules`` is what ``add_lora`` matched with: module-name suffixes, or (for a
    regex injection) the full names of the layers it wrapped.
    """

    r: int
    lora_alpha: float
    target_modules: list[str]
    lora_dropout: float = 0.0
    use_rslora: bool = False
    bias: str = "none"
    fan_in_fan_out: bool = False
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    peft_type: str = "LORA"


def _configs(model: nn.Module) -> dict[str, LoRAConfig]:
    """The adapters ``add_lora`` put on ``model``, by name (kept on the model itself)."""
    if "_lora_configs" not in model.__dict__:
        model.__dict__["_lora_configs"] = {}
    return model.__dict__["_lora_configs"]


def _can_wrap(mod: nn.Module) -> bool:
    return isinstance(mod, (LoRALayer, nn.Embedding)) or _is_conv1d(mod) or (
        isinstance(getattr(mod, "in_features", None), int)
        and isinstance(getattr(mod, "out_features", None), int))


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named sub-modules, skipping the insides of LoRA layers (never wrap a wrapper)."""
    out, inside = [], ()
    for name, mod in model.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        if isinstance(mod, LoRALayer):
            inside = inside + (name + ".",)
        out.append((name, mod))
    return out


def find_targets(model: nn.Module, targets) -> list[tuple[str, nn.Module]]:
    """The layers ``targets`` names, in model order.

    Args:
        targets: a suffix or a list of suffixes of module names (``"q_proj"`` matches
            ``model.layers.0.self_attn.q_proj``; a suffix must end at a dot boundary, as
            in PEFT), or a compiled regex (``re.compile(r".*\\.[qv]_proj")``) that must
            match a full module name.

    Raises:
        ValueError: a target matches nothing (the message lists the layer names that
            exist), or matches a module LoRA cannot wrap.
    """
    cands = _candidates(model)
    wrappable = sorted({n.rsplit(".", 1)[-1] for n, m in cands if _can_wrap(m)})
    hint = f"layers LoRA can wrap here, by name: {', '.join(wrappable) or '(none)'}"
    if isinstance(targets, re.Pattern):
        hits = [(n, m) for n, m in cands if targets.fullmatch(n)]
        if not hits:
            raise ValueError(f"target pattern {targets.pattern!r} matches no module; {hint}")
    else:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, Sequence) or not targets or not all(
                isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"targets must be a non-empty list of module-name suffixes such as "
                f"['q_proj', 'v_proj'], or a compiled regex; got {targets!r}")
        missing = [t for t in targets
                   if not any(n == t or n.endswith("." + t) for n, _ in cands)]
        if missing:
            raise ValueError(f"target(s) {missing} match no module; {hint}")
        hits = [(n, m) for n, m in cands if any(n == t or n.endswith("." + t) for t in targets)]
    bad = [f"{n} ({type(m).__name__})" for n, m in hits if not _can_wrap(m)]
    if bad:
        raise ValueError(
            f"targets matched modules LoRA cannot wrap: {bad[:5]}; LoRA wraps nn.Linear, "
            "nn.Embedding, GPT-2 Conv1D or layers with in_features/out_features. "
            f"Name those instead: {hint}")
    return hits


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


@dataclass
class LoRAReport:
    """What ``add_lora`` did: which layers it wrapped and the parameter count after."""

    adapter_name: str
    config: LoRAConfig
    layers: list[str]
    params: ParamCount
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.layers:
            kinds[n.rsplit(".", 1)[-1]] = kinds.get(n.rsplit(".", 1)[-1], 0) + 1
        c = self.config
        scale = c.lora_alpha / (math.sqrt(c.r) if c.use_rslora else c.r)
        lines = [f"LoRA adapter {self.adapter_name!r}: r={c.r}, alpha={c.lora_alpha} "
                 f"(scaling {scale:.4g}) on {len(self.layers)} layers "
                 f"({', '.join(f'{k} x{v}' for k, v in kinds.items())})",
                 self.params.summary()]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def add_lora(model: nn.Module, targets, *, r: int, alpha: float, dropout: float = 0.0,
             use_rslora: bool = False, bias: str = "none",
             adapter_name: str = "default") -> LoRAReport:
    """Wrap the target layers of ``model`` in LoRA layers, in place, and freeze the rest.

    Each matched ``nn.Linear`` (or linear-like layer) becomes a :class:`LoRALinear`, each
    ``nn.Embedding`` a :class:`LoRAEmbedding`. A layer that is already a LoRA layer gets
    a second, named adapter. Afterwards only the new adapter trains (plus biases, if
    ``bias`` says so), and it is the active adapter.

    Args:
        model: any ``nn.Module`` (labkit's model, a transformers model, your own).
        targets: suffixes such as ``["q_proj", "v_proj"]``, or ``re.compile(...)``
            matched against full module names (see :func:`find_targets`).
        r, alpha, dropout, use_rslora: the adapter's hyper-parameters.
        bias: ``"none"`` (biases frozen), ``"all"`` (every bias trains) or ``"lora_only"``
            (biases of the wrapped layers train), as in PEFT.
        adapter_name: name of this adapter; several may share one model.

    Returns:
        A :class:`LoRAReport`; ``print`` it for the PEFT-style summary line.

    Raises:
        ValueError: bad hyper-parameters, a target that matches nothing, or an adapter of
            this name already on the model / on one of the layers.
        RuntimeError: an adapter is merged into the model (unmerge first).
    """
    _check_hparams(r, alpha, dropout)
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    configs = _configs(model)
    if adapter_name in configs:
        raise ValueError(
            f"model already has a LoRA adapter named {adapter_name!r} (targets "
            f"{configs[adapter_name].target_modules}); pass another adapter_name, or "
            f"delete_adapter(model, {adapter_name!r}) first")
    if merged := [n for n, lay in lora_layers(model) if lay.merged]:
        raise RuntimeError(f"layers {merged[:3]} have an adapter merged into their weights; "
                           "unmerge_lora(model) before adding another adapter")
    hits = find_targets(model, targets)
    conv = {_is_conv1d(getattr(m, "base_layer", m)) for _, m in hits}
    if len(conv) > 1:  # the file format has one fan_in_fan_out flag per adapter
        raise ValueError(
            "targets mix GPT-2 Conv1D layers with other layers; PEFT's adapter format records "
            "one fan_in_fan_out flag per adapter, so put them in two adapters (adapter_name=)")
    twice = [n for n, m in hits if isinstance(m, LoRALayer) and adapter_name in m.r]
    if twice:  # check before changing anything, so a failed call leaves the model as it was
        raise ValueError(
            f"layers {twice[:5]} already have a LoRA adapter named {adapter_name!r}; "
            "pass another adapter_name to add a second adapter")
    notes = []
    for name, mod in hits:
        emb = isinstance(mod, (nn.Embedding, LoRAEmbedding))
        p = 0.0 if emb else dropout  # token ids take no dropout
        if isinstance(mod, LoRALayer):
            mod.add_adapter(adapter_name, r, alpha, p, use_rslora)
            continue
        cls = LoRAEmbedding if emb else LoRALinear
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(mod, r, alpha, p, use_rslora, adapter_name))
    if dropout > 0 and any(isinstance(m, (nn.Embedding, LoRAEmbedding)) for _, m in hits):
        notes.append("dropout is not applied to embedding layers (their input is token ids)")
    if isinstance(targets, re.Pattern):  # save the exact layers: PEFT matches full names too
        saved = [n for n, _ in hits]
    else:
        saved = sorted({targets} if isinstance(targets, str) else set(targets))
    configs[adapter_name] = LoRAConfig(r=r, lora_alpha=alpha, target_modules=saved,
                                       lora_dropout=dropout, use_rslora=use_rslora, bias=bias,
                                       fan_in_fan_out=conv == {True})
    set_adapter(model, adapter_name)
    return LoRAReport(adapter_name, configs[adapter_name], [n for n, _ in hits],
                      count_params(model), notes)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """``(name, layer)`` for every LoRA layer in ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALayer):
            yield name, mod


def _layers_or_raise(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora(model, targets, ...) first")
    return layers


def get_adapter_params(model: nn.Module,
                       adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """The adapter tensors (``A`` and ``B`` of every layer), by parameter name.

    ``adapter_name=None`` takes every adapter. Useful to build an optimizer over exactly
    the LoRA parameters, or to save them.
    """
    out = {}
    for path, layer in lora_layers(model):
        for n, p in layer.named_parameters():
            kind, _, rest = n.partition(".")
            if kind in layer.adapter_kinds and (
                    adapter_name is None or rest.split(".")[0] == adapter_name):
                out[f"{path}.{n}" if path else n] = p
    return out


def set_trainable_params(model: nn.Module, names) -> None:
    """Let exactly the parameters named in ``names`` train; freeze all others."""
    names = set(names)
    known = {n for n, _ in model.named_parameters()}
    if names - known:
        raise KeyError(f"no parameters named {sorted(names - known)[:5]} in the model")
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter of every layer that has it, and the only
    trainable one (plus the biases its ``bias`` setting names). Layers without it go idle.
    """
    layers = _layers_or_raise(model)
    have = {n for _, lay in layers for n in lay.r}
    if adapter_name not in have:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(have)}")
    for _, lay in layers:
        if lay.merged and lay.merged_adapter != adapter_name:
            raise RuntimeError(f"adapter {lay.merged_adapter!r} is merged; unmerge_lora(model) "
                               "before switching adapters")
    for _, lay in layers:
        lay.set_adapter(adapter_name if adapter_name in lay.r else None)
    names = set(get_adapter_params(model, adapter_name))
    bias = getattr(_configs(model).get(adapter_name), "bias", "none")
    for n, _ in model.named_parameters():
        if bias == "all" and (n == "bias" or n.endswith(".bias")):
            names.add(n)
    if bias == "lora_only":
        for path, lay in layers:
            if adapter_name in lay.r and getattr(lay.base_layer, "bias", None) is not None:
                names.add(f"{path}.base_layer.bias")
    set_trainable_params(model, names)


def enable_adapters(model: nn.Module, enabled: bool = True) -> None:
    """Switch all adapters on (or off: the model computes exactly its base model)."""
    for _, lay in _layers_or_raise(model):
        lay.enable_adapters(enabled)


def disable_adapters(model: nn.Module) -> None:
    enable_adapters(model, False)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """``with adapters_disabled(model):`` runs the base model, then switches back."""
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name`` from every layer (layers keep their other adapters)."""
    layers = _layers_or_raise(model)
    if not any(adapter_name in lay.r for _, lay in layers):
        raise KeyError(f"no adapter named {adapter_name!r} in the model")
    for _, lay in layers:
        if adapter_name in lay.r:
            lay.delete_adapter(adapter_name)
    _configs(model).pop(adapter_name, None)


def merge_lora(model: nn.Module) -> None:
    """Merge the active adapter into the base weights of every LoRA layer (see ``merge``).

    Raises:
        RuntimeError: some layer is merged already, or adapters are disabled; checked for
            every layer before any weight changes.
    """
    layers = [lay for _, lay in _layers_or_raise(model)]
    if merged := [lay.merged_adapter for lay in layers if lay.merged]:
        raise RuntimeError(f"adapter {merged[0]!r} is already merged into the model; "
                           "unmerge_lora(model) before merging again")
    if not all(lay.adapters_enabled for lay in layers):
        raise RuntimeError("adapters are disabled; enable_adapters(model) before merging")
    for lay in layers:
        if lay.active_adapter is not None:
            lay.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    layers = [lay for _, lay in _layers_or_raise(model) if lay.merged]
    if not layers:
        raise RuntimeError("nothing to unmerge: no adapter is merged in this model")
    for lay in layers:
        lay.unmerge()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the *base* architecture with the active adapters folded in.

    Keys are those of the model before ``add_lora`` (no ``base_layer``, no ``lora_*``),
    so the result loads into a plain copy of the base model with ``load_state_dict``.
    The model itself is not changed.
    """
    layers = dict(_layers_or_raise(model))
    out = {}
    for key, t in model.state_dict().items():
        parts = key.split(".")
        owner = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                      if ".".join(parts[:i]) in layers), None)
        if owner is not None:
            lay, rest = layers[owner], key[len(owner) + 1:]
            if rest.split(".")[0] in lay.adapter_kinds:
                continue
            rest = rest.removeprefix("base_layer.")
            key = f"{owner}.{rest}"
            if rest == "weight" and lay._use_adapter():
                w = lay.base_weight()
                t = w + lay.delta_weight().to(w.dtype)
                t = t.T if lay.fan_in_fan_out else t
        out[key] = t.detach().clone()
    return out


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoRA layer by its base layer (merging the active adapter first when
    ``merge``). Parameters stay frozen; ``model.requires_grad_(True)`` to train them all.
    """
    for name, lay in _layers_or_raise(model):
        if merge and lay._use_adapter():
            lay.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, lay.base_layer)
    _configs(model).clear()
    return model


# --------------------------------------------------------------------------- accounting


def _numel(p: torch.Tensor) -> int:
    """Logical parameter count. bitsandbytes packs two 4-bit weights per byte of a
    ``Params4bit`` tensor, so its ``numel`` is half (per storage byte) the weights it
    holds; count them as PEFT does, so our totals equal PEFT's."""
    n = p.numel()
    if type(p).__name__ == "Params4bit":
        n *= 2 * p.element_size()
    return n


def count_params(model: nn.Module) -> ParamCount:
    """Total and trainable parameters (shared tensors counted once), as PEFT counts them."""
    total = trainable = 0
    for _, p in model.named_parameters():
        total += _numel(p)
        trainable += _numel(p) if p.requires_grad else 0
    return ParamCount(total, trainable)


def param_summary(model: nn.Module) -> str:
    """``trainable params: 1,280 || all params: 20,896 || trainable%: 6.1256`` (PEFT's line)."""
    return count_params(model).summary()


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
    rows, c = param_rows(model, depth), count_params(model)
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


def count_lora_params(model: nn.Module, targets, r: int) -> LoRAEstimate:
    """Count the adapter parameters for ``targets`` at rank ``r`` from layer shapes alone.

    Nothing is allocated, so a 70B model built on the meta device
    (``with torch.device("meta"): model = Model(config)``) is counted in milliseconds.
    Each linear ``d x k`` adds ``r * (d + k)``; each embedding ``V x D`` adds ``r * (V + D)``.
    """
    _check_hparams(r, 1, 0.0)
    by_target: dict[str, int] = {}
    hits = find_targets(model, targets)
    for name, mod in hits:
        if isinstance(mod, (nn.Embedding, LoRAEmbedding)):
            n = lora_param_count(mod.num_embeddings, mod.embedding_dim, r)
        else:
            n = lora_param_count(mod.out_features, mod.in_features, r)
        key = name.rsplit(".", 1)[-1]
        by_target[key] = by_target.get(key, 0) + n
    return LoRAEstimate(sum(by_target.values()), count_params(model).total, len(hits), by_target)
