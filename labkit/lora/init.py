"""How a LoRA adapter starts: LoRA's default, PEFT's "gaussian", and PiSSA.

``init=`` of :func:`labkit.lora.add_lora` (PEFT's ``init_lora_weights``):

- ``"default"`` (PEFT's ``True``; LoRA paper, section 4.1): ``A`` Kaiming-uniform, ``B = 0``.
- ``"gaussian"``: ``A ~ N(0, (1/r)^2)``, ``B = 0`` (PEFT's ``"gaussian"``).
- ``"pissa"`` (Meng et al., 2024, arXiv:2404.02948, section 3): the adapter starts as the
  top-``r`` singular part of ``W`` and the frozen base holds the rest::

      W = U S V^T                                   (SVD; W: (d, k), S descending)
      B = U_r sqrt(S_r / s),  A = sqrt(S_r / s) V_r^T     B: (d, r), A: (r, k)
      W_res = W - s B A = U_[r:] S_[r:] V_[r:]^T    (the base from now on)

  so ``W_res + s B A = W``: the model is unchanged at the start, but training moves the
  principal directions instead of a zero update. Dividing ``S_r`` by the scaling ``s``
  is PEFT's convention (``s B A`` is the top-``r`` part for any ``alpha``). Singular
  vectors have arbitrary signs (``u, v`` and ``-u, -v``), so only ``B A`` and ``W_res`` are
  defined, not ``A`` and ``B`` themselves; compare those.
- ``"loftq"`` quantizes the base, so it lives in :mod:`labkit.qlora.loftq` and is reached
  through :func:`labkit.qlora.prepare_qlora`.

PiSSA needs the float weight: on a 4-bit layer it is refused (as PEFT refuses it). For
QLoRA (QPiSSA, paper section 3.4) initialise in float, then quantize the residual:
``prepare_qlora(..., init="pissa")``.

A PiSSA adapter trained to ``(A, B)`` belongs to the residual base. For the *original* base,
:func:`pissa_to_lora` converts it as PEFT's ``save_pretrained(...,
path_initial_model_for_weight_conversion=...)`` does: ``W + s B' A' = W_res + s B A`` with
the rank-``2r`` adapter ``A' = [A; A_0]``, ``B' = [B, -B_0]`` (``A_0, B_0``: the initial
adapter) and ``alpha`` doubled (times ``sqrt 2`` with rsLoRA) so that the scaling stays.

Imports: torch only (layers are passed in).
"""

from __future__ import annotations

import math

from labkit._deps import torch  # one clear line when torch is missing

from torch import nn

#: ``init=`` values of ``add_lora``; "loftq" is prepare_qlora's (it quantizes the base).
INITS = ("default", "gaussian", "pissa", "loftq")
#: PEFT's ``init_lora_weights`` for each labkit ``init`` (what adapter_config.json records).
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "loftq": "loftq"}


def check_init(init: str, layer: nn.Module | None = None) -> None:
    """Refuse an unknown ``init``, LoftQ (prepare_qlora's), and PiSSA where it cannot run
    (``layer``: the LoRA layer about to get the adapter, or the layer it will wrap; ``None``
    checks the name only)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "loftq":
        raise ValueError("init='loftq' quantizes the base weight, so it belongs to QLoRA: use "
                         "labkit.qlora.prepare_qlora(model, targets, init='loftq', ...)")
    if init == "pissa" and layer is not None:
        base = getattr(layer, "base_layer", layer)  # a LoRA layer, or the layer it will wrap
        if isinstance(base, nn.Embedding):
            raise ValueError(f"init='pissa' is for linear layers; {type(base).__name__} is "
                             "not one (PEFT has no PiSSA for embeddings either)")
        w = getattr(base, "weight", None)
        if not (isinstance(w, torch.Tensor) and w.dtype in (torch.float32, torch.float16,
                                                            torch.bfloat16, torch.float64)):
            raise TypeError(
                f"init='pissa' needs the float weight, but this {type(base).__name__} "
                "holds no float weight (already quantized?). As PEFT: initialise PiSSA in "
                "float, then quantize the residual: labkit.qlora.prepare_qlora(model, targets, "
                "init='pissa', ...) on the full-precision model")


@torch.no_grad()
def pissa_factors(w: torch.Tensor, r: int, scaling: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, W_res)`` of PiSSA for a weight ``w`` of shape ``(d, k)``, in float32.

    ``A: (r, k)``, ``B: (d, r)``, ``W_res = w - scaling * B @ A``; see the module docstring.
    """
    U, S, Vh = torch.linalg.svd(w.float(), full_matrices=False)  # w = U diag(S) Vh
    root = torch.sqrt(S[:r] / scaling)  # (r,): sqrt(S_r / s), split between A and B
    B = U[:, :r] * root  # (d, r): columns u_i sqrt(s_i / s)
    A = root[:, None] * Vh[:r]  # (r, k): rows sqrt(s_i / s) v_i^T
    return A, B, w.float() - scaling * (B @ A)


@torch.no_grad()
def init_adapter(layer: nn.Module, name: str, init: str) -> None:
    """Give the new adapter ``name`` of ``layer`` its starting values (module docstring).

    ``"default"`` leaves what the layer created (Kaiming ``A``, zero ``B``; for embeddings
    zero ``A``, normal ``B``); PEFT's ``"gaussian"`` re-draws a linear layer's ``A``.
    ``"pissa"`` also rewrites the base weight (to ``W_res``).
    """
    check_init(init, layer)
    if init == "gaussian" and hasattr(layer, "lora_A"):
        nn.init.normal_(layer.lora_A[name].weight, std=1 / layer.r[name])
    elif init == "pissa":
        w = layer.base_layer.weight
        A, B, res = pissa_factors(layer.base_weight(), layer.r[name], layer.scaling[name])
        layer.lora_A[name].weight.data.copy_(A)
        layer.lora_B[name].weight.data.copy_(B)
        layer._write_base_weight(res.to(w.dtype))


def pissa_to_lora(tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """A trained PiSSA adapter as a LoRA adapter of rank ``2r`` for the original base.

    ``W_res + s B A = W + s (B A - B_0 A_0) = W + s [B, -B_0] [A; A_0]`` (PEFT's
    ``subtract_mutated_init``). ``tensors`` and ``initial`` map file keys to tensors
    (the trained adapter and the one saved right after initialisation); ``lora_A`` keys are
    stacked along the rank (rows), ``lora_B`` keys along columns with ``-B_0``; every other
    tensor (a DoRA magnitude, a bias) passes unchanged. Multiply ``r`` by 2 and ``alpha``
    by 2 (``sqrt 2`` with rsLoRA) in the config: :func:`converted_alpha`.

    Raises:
        ValueError: the two adapters do not hold the same keys and shapes.
    """
    ab = sorted(k for k in tensors if ".lora_A." in k or ".lora_B." in k)
    bad = [k for k in ab if k not in initial or initial[k].shape != tensors[k].shape]
    if bad:
        raise ValueError(f"the initial adapter does not match the trained one at {bad[:3]}; "
                         "pass the adapter saved right after init='pissa' on this model")
    out = dict(tensors)
    for k in ab:
        if ".lora_A." in k:
            out[k] = torch.cat([tensors[k], initial[k].to(tensors[k].dtype)], dim=0)
        else:
            out[k] = torch.cat([tensors[k], -initial[k].to(tensors[k].dtype)], dim=1)
    return out


def converted_alpha(alpha: float, use_rslora: bool) -> float:
    """``alpha`` of the rank-``2r`` converted adapter that keeps the scaling: ``alpha / r ==
    2 alpha / 2r``, and with rsLoRA ``alpha / sqrt r == sqrt(2) alpha / sqrt(2r)``."""
    return alpha * math.sqrt(2) if use_rslora else alpha * 2
