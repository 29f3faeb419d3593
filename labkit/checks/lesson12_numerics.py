"""Lesson 12's exercises on numbers: alpha / r, a QLoRA merge, fp16, QLoRA's work, memory.

* :func:`check_alpha_scale`: ``f(A, B, lora_alpha, r, use_rslora) -> (A, B)``, factors trained
  in a layer WITHOUT the scale, rewritten so that PEFT's layer (which multiplies by
  ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA) computes the same update.
* :func:`check_qlora_merge`: ``f(W, A, B, scale) -> W_merged``, the 16-bit merged weight of a
  QLoRA adapter: the update goes onto the NF4 base the adapter was trained with,
  ``dequantize(quantize(W)) + scale * B A``, not onto the original ``W``.
* :func:`check_loss_scaler`: ``f(grads, scale) -> (grads or None, new_scale)``, one step of a
  dynamic loss scaler (what ``torch.amp.GradScaler`` does): fp16 gradients of ``scale * loss``
  come back in float32 divided by ``scale``, unless one of them is inf or NaN: then the
  step is skipped (None) and the scale halves.
* :func:`check_dequant_count`: ``f(sizes, input_needs_grad, gradient_checkpointing) -> int``,
  the 4-bit weights dequantized in one training step (the work QLoRA adds to LoRA).
* :func:`check_fits_on_card`: ``f(peak_bytes, context_bytes, card_mib) -> bool``, whether a
  step fits on a GPU: the allocator's peak plus the CUDA context within ``card_mib * 2**20``.

Imports: ``labkit.checks.harness``; torch on first use; ``labkit.quant`` inside
:func:`check_qlora_merge`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from labkit.checks import harness as H

torch = None  # imported on first use by H._need_torch(globals())


def _pair(name: str, got, shapes) -> H.CheckResult | None:
    """A FAIL report unless ``got`` is two tensors of ``shapes``."""
    if got is None:
        return H._report(name, False, H._RETURNED_NONE)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return H._report(name, False, f"return the pair (A, B); got {type(got).__name__}")
    for what, t, shape in zip(("A", "B"), got, shapes, strict=True):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            found = H._shape(t) if isinstance(t, torch.Tensor) else type(t).__name__
            return H._report(name, False, f"{what} must keep its shape {tuple(shape)}; got {found}")
    return None


# ------------------------------------------------------------------ the alpha / r scale


def check_alpha_scale(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(A, B, lora_alpha, r, use_rslora) -> (A2, B2)``.

    ``A`` (r x k) and ``B`` (d x r) were trained in a layer computing ``W x + B A x``, with no
    scale. PEFT's layer computes ``W x + s B A x`` with ``s = lora_alpha / r`` (``lora_alpha /
    sqrt(r)`` when ``use_rslora``). The answer must make ``s B2 A2 == B A``, e.g.
    ``B2 = B / s`` with A unchanged.

    Named: unchanged factors (the update is s times too large), multiplying by s, dividing
    both factors by s, alpha / r used with rsLoRA (or alpha / sqrt(r) without it).
    """
    name = "alpha_scale"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    cases = [(16, 8, False), (8, 32, False), (32, 16, True)]  # no two mistakes coincide
    rng.shuffle(cases)
    for alpha, r, rs in cases:
        d, k = rng.choice([(12, 10), (16, 6)])
        A = torch.randn(r, k, generator=gen, dtype=torch.float64)
        B = torch.randn(d, r, generator=gen, dtype=torch.float64)
        s = alpha / math.sqrt(r) if rs else alpha / r
        where = f"(lora_alpha={alpha}, r={r}, use_rslora={rs}: PEFT's scale is {s:.4g})"
        try:
            got = H._call(fn, A.clone(), B.clone(), alpha, r, rs)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} {where}")
        if (bad := _pair(name, got, (A.shape, B.shape))) is not None:
            return bad
        update = s * (got[1].double() @ got[0].double())
        want = B @ A
        if torch.allclose(update, want, rtol=1e-6, atol=1e-9):
            continue
        # the learner's B2 A2 = c * B A, so PEFT's update is ratio = s * c times the right one
        ratio = (update * want).sum().item() / (want * want).sum().item()
        if torch.allclose(update, ratio * want, rtol=1e-6, atol=1e-9):
            other = alpha / r if rs else alpha / math.sqrt(r)  # the other convention's scale
            named = [
                (s, "the factors are unchanged, so PEFT's layer multiplies the update the "
                    "adapter learnt by its scale; divide B (or A) by the scale once"),
                (1 / s, "you divided both factors by the scale, so B A shrinks by it twice; "
                        "divide only one of them"),
                (s * s, "you multiplied by the scale, and PEFT multiplies once more; divide B "
                        "by it instead"),
                (s / other, "you divided by the other convention's scale: use_rslora=True "
                            "scales by lora_alpha / sqrt(r), without it by lora_alpha / r"),
            ]
            for value, why in named:
                if math.isclose(ratio, value, rel_tol=1e-6):
                    return H._report(name, False, f"{why} {where}")
            return H._report(name, False, f"PEFT's layer would add {ratio:.4g} times the update "
                             f"the adapter learnt, not once; return factors with s B2 A2 = B A "
                             f"{where}")
        return H._report(name, False, "s B2 A2 is not a multiple of B A: change only the scale of "
                         f"a factor, not its direction {where}")
    return H._report(name, True, "PEFT's scaled update equals the unscaled layer's, for "
                     "lora_alpha / r and rsLoRA's lora_alpha / sqrt(r)")


# ------------------------------------------------------------------ merging a QLoRA adapter


def check_qlora_merge(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(W, A, B, scale) -> W_merged``, a QLoRA adapter merged into a float weight.

    During QLoRA training the adapter saw the base ``Q(W) = dequantize_4bit(*quantize_4bit(W))``
    (NF4, blocks of 64, ``labkit.quant``'s defaults), never the original ``W``, so the merged
    weight that reproduces the trained model is ``Q(W) + scale * B @ A``, in float32. Merging
    onto ``W`` adds ``W - Q(W)``, the quantization error the adapter never saw; merging and
    then quantizing again rounds the update onto the 4-bit grid.

    Named: merged onto the original W; no update; the update without its scale; the merged
    weight quantized to 4 bits again; a result not in float32 or of another shape.
    """
    name = "qlora_merge"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    from labkit.quant import dequantize_4bit, quantize_4bit

    def q(w):
        return dequantize_4bit(*quantize_4bit(w))

    gen = torch.Generator().manual_seed(seed)
    for d, k, r, scale in ((64, 32, 4, 2.0), (48, 64, 8, 0.5)):
        W = torch.randn(d, k, generator=gen) / 8
        A = torch.randn(r, k, generator=gen) / 8
        B = torch.randn(d, r, generator=gen) / 8
        where = f"(W {d} x {k}, r={r}, scale={scale})"
        base = q(W)
        want = base + scale * B @ A
        try:
            got = H._call(fn, W.clone(), A.clone(), B.clone(), scale)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} {where}")
        if got is None:
            return H._report(name, False, H._RETURNED_NONE)
        if not isinstance(got, torch.Tensor):
            return H._report(name, False, f"return the merged weight as a tensor; got "
                             f"{type(got).__name__}")
        if tuple(got.shape) != (d, k):
            return H._report(name, False, f"the merged weight has shape {H._shape(got)}, W has "
                             f"({d}, {k}): the update is B @ A, (d x r) times (r x k) {where}")
        if got.dtype != torch.float32:
            return H._report(name, False, f"the merged weight is {got.dtype}: return it in "
                             f"float32 (cast to bf16 once, when you save it) {where}")
        if torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            continue
        named = [
            (W + scale * B @ A, "you merged onto the original W: the adapter was trained on "
                                "its 4-bit version, so start from dequantize_4bit("
                                "*quantize_4bit(W))"),
            (base, "the update is missing: add scale * B @ A to the dequantized base"),
            (base + B @ A, "the update lacks its scale: add scale * B @ A"),
            (W, "that is W itself: start from the dequantized 4-bit base and add scale * B @ A"),
            (q(want), "you quantized the merged weight to 4 bits again, which rounds the update "
                      "onto the NF4 grid: keep the merged weight in float32"),
            (q(W + scale * B @ A), "you merged onto the original W and quantized again: start "
                                   "from dequantize_4bit(*quantize_4bit(W)) and keep the "
                                   "result in float32"),
        ]
        for value, why in named:
            if torch.allclose(got, value, rtol=1e-5, atol=1e-6):
                return H._report(name, False, f"{why} {where}")
        err = (got - want).abs().max().item()
        return H._report(name, False, f"the merged weight differs from dequantize_4bit("
                         f"*quantize_4bit(W)) + scale * B @ A by up to {err:.3g} {where}")
    return H._report(name, True, "the update goes onto the 4-bit base the adapter was trained "
                     "with, in float32")


# ------------------------------------------------------------------ fp16 and a loss scaler

_FP16_TINY = 2.0**-24  # the smallest positive float16 (subnormal)


def _scaler_cases(gen):
    """(grads in fp16, scale, finite?) for a good step, an inf step and a NaN step."""
    true = [torch.randn(6, 5, generator=gen) * 1e-8, torch.randn(7, generator=gen) * 3e-8]
    scale = 2.0**16
    good = [(g * scale).half() for g in true]  # tiny gradients, representable once scaled
    inf = [t.clone() for t in good]
    inf[0][1, 2] = float("inf")
    nan = [t.clone() for t in good]
    nan[1][3] = float("nan")
    return [(good, scale, True), (inf, scale, False), (nan, 2.0**15, False)]


def check_loss_scaler(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(grads, scale) -> (grads or None, new_scale)``, one dynamic loss-scaling step.

    ``grads`` are float16 gradients of ``scale * loss``. When all are finite, return them in
    float32 divided by ``scale`` (dividing in fp16 flushes gradients below 2^-24 to zero)
    with the scale unchanged; when one is inf or NaN, return ``None`` (skip the optimizer
    step: it would write inf / NaN into the weights) and ``scale / 2``. This is
    ``torch.amp.GradScaler`` without its growth every 2000 good steps.

    Named: an overflowed step let through, NaN not caught (``isinf`` only), the scale not
    halved (or changed on a good step), multiplied instead of divided, not divided,
    unscaled in float16.
    """
    name = "loss_scaler"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    gen = torch.Generator().manual_seed(seed)
    for grads, scale, finite in _scaler_cases(gen):
        kind = "all finite" if finite else ("one inf" if any(
            torch.isinf(g).any() for g in grads) else "one NaN")
        where = f"(scale {scale:g}, gradients: {kind})"
        try:
            got = H._call(fn, [g.clone() for g in grads], scale)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} {where}")
        if got is None:
            return H._report(name, False, H._RETURNED_NONE)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return H._report(name, False, "return a pair (grads or None, new_scale); got "
                             f"{type(got).__name__}")
        out, new_scale = got
        if isinstance(new_scale, torch.Tensor) and new_scale.numel() == 1:
            new_scale = new_scale.item()
        if isinstance(new_scale, bool) or not isinstance(new_scale, (int, float)):
            return H._report(name, False, f"the new scale must be a number; got "
                             f"{type(new_scale).__name__}")
        if not finite:
            if out is not None:
                if kind == "one NaN":
                    return H._report(name, False, "a NaN gradient went through: torch.isinf "
                                     "misses NaN; test torch.isfinite(g).all() for every "
                                     f"gradient {where}")
                return H._report(name, False, "an overflowed step went through: the optimizer "
                                 "would write inf / NaN into the adapters, and every loss after "
                                 f"it is NaN; return None to skip the step {where}")
            if not math.isclose(new_scale, scale / 2):
                return H._report(name, False, f"you skipped the step but the scale is "
                                 f"{new_scale:g}: halve it ({scale / 2:g}), or the next step "
                                 f"overflows again {where}")
            continue
        if out is None:
            return H._report(name, False, f"you skipped a step whose gradients are all finite "
                             f"{where}")
        if not isinstance(out, (list, tuple)) or len(out) != len(grads) or not all(
                isinstance(g, torch.Tensor) and g.shape == w.shape
                for g, w in zip(out, grads, strict=True)):
            return H._report(name, False, "return the gradients as a list of tensors in the "
                             f"order and shapes they came in {where}")
        if not math.isclose(new_scale, scale):
            return H._report(name, False, f"the scale changed to {new_scale:g} after a good step; "
                             f"keep it ({scale:g}) {where}")
        if any(g.dtype != torch.float32 for g in out):
            return H._report(name, False, "the unscaled gradients are not float32: in float16 "
                             f"gradients below {_FP16_TINY:.2g} become 0 (here "
                             f"{sum(int(((w.float() / scale).half() == 0).sum()) for w in grads)}"
                             f" of them); cast to float32, then divide {where}")
        want = [g.float() / scale for g in grads]
        for value, why in (([g.float() * scale for g in grads], "you multiplied by the scale: "
                            "divide by it"),
                           ([g.float() for g in grads], "the gradients are not divided by the "
                            "scale: they are scale times too large")):
            if all(torch.allclose(g, v, rtol=1e-6) for g, v in zip(out, value, strict=True)):
                return H._report(name, False, f"{why} {where}")
        if not all(torch.allclose(g, w, rtol=1e-6, atol=0) for g, w in zip(out, want, strict=True)):
            return H._report(name, False, f"the gradients are not g.float() / scale {where}")
    return H._report(name, True, "finite fp16 gradients come back unscaled in float32; a step "
                     "with inf or NaN is skipped and the scale halves")


# ------------------------------------------------------------------ the work QLoRA adds


def _dequantized(sizes, needs_grad, ckpt) -> int:
    return sum(n * (1 + bool(g) + bool(ckpt)) for n, g in zip(sizes, needs_grad, strict=True))


def check_dequant_count(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(sizes, input_needs_grad, gradient_checkpointing) -> int``.

    ``sizes[i]`` is the number of weights of the i-th 4-bit layer, ``input_needs_grad[i]``
    whether a gradient must flow back through that layer's input. In one training step each
    4-bit weight is dequantized once in the forward pass, once more in the backward pass when
    the layer must pass a gradient to its input (``grad_x = grad_y @ W``; a frozen layer
    never needs ``grad_W``), and once more when gradient checkpointing recomputes the
    forward pass. The answer: the number of weights dequantized in one step.

    Named: forward only; the backward counted for every layer; the recomputation
    forgotten, or counted without checkpointing; bytes instead of a count.
    """
    name = "dequant_count"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    rng = random.Random(seed)
    for ckpt in (False, True, rng.random() < 0.5):
        n = rng.randint(6, 12)
        sizes = [rng.choice([4096, 8192, 11008]) * rng.choice([64, 128]) for _ in range(n)]
        grads = [i >= 3 or rng.random() < 0.3 for i in range(n)]  # the first inputs frozen
        grads[rng.randrange(3)] = False
        where = f"({n} layers, {grads.count(False)} with a frozen input, checkpointing {ckpt})"
        want = _dequantized(sizes, grads, ckpt)
        try:
            got = H._call(fn, list(sizes), list(grads), ckpt)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} {where}")
        if (bad := H._not_a_number(name, got, "an int")) is not None:
            return bad
        if got == want:
            continue
        total = sum(sizes)
        named = [
            (total, "you counted the forward pass only: the backward pass dequantizes again to "
                    "compute grad_x = grad_y @ W"),
            (_dequantized(sizes, [True] * n, ckpt), "the backward pass dequantizes only layers "
                                                    "whose input needs a gradient"),
            (_dequantized(sizes, grads, not ckpt), "checkpointing recomputes the forward pass, "
                                                   "one more dequantization per layer, and only "
                                                   "with checkpointing on"),
            (2 * want, "that is twice the count: bytes in bf16? return the number of weights"),
            (want // 2, "that is half the count: bytes of 4-bit codes? return the number of "
                        "weights"),
        ]
        for value, why in named:
            if got == value:
                return H._report(name, False, f"{why} {where}")
        return H._report(name, False, f"you return {got:,}, expected {want:,} {where}")
    return H._report(name, True, "forward, backward where the input needs a gradient, and the "
                     "recomputation under checkpointing")


# ------------------------------------------------------------------ will it fit?


def check_fits_on_card(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(peak_bytes, context_bytes, card_mib) -> bool``, the out-of-memory rule.

    A step fits when the allocator's peak (``memory.estimate_peak(...).peak``) plus the CUDA
    context, which lives outside the allocator, is at most the card's memory, given in MiB
    (2^20 bytes) as ``nvidia-smi`` reports it: a "16 GB" T4 has 15,360 MiB.

    Named: the context left out; MiB taken as 10^6 bytes; the card taken as its name's
    16 GB; a strict comparison at equality; not a bool.
    """
    name = "fits_on_card"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    rng = random.Random(seed)
    card = 15360  # a T4
    cap = card * 2**20
    ctx = rng.randint(400, 800) * 2**20
    # (peak + context in bytes, fits?, the slip that gets this case wrong); in this order,
    # each case is the first one that a single slip fails
    cases = [(15.7e9, True, "MiB are 2^20 bytes, not 10^6: the card holds card_mib * 2**20 "
                            "bytes"),
             (16.05e9, True, "the card holds card_mib * 2**20 bytes (16.1e9 for 15,360 MiB), "
                             "not the 16e9 of its name"),
             (cap + ctx + 2**26, False, "a '16 GB' T4 reports 15,360 MiB, not 16 GiB: use "
                                        "card_mib"),
             (cap + ctx // 2, False, "the CUDA context lives outside the allocator's peak: "
                                     "add it before comparing"),
             (cap, True, "a step that needs exactly the card's memory fits: compare with <="),
             (cap + 2**20, False, "")]
    cases = [(int(total) - ctx, ctx, want, why) for total, want, why in cases]
    for peak, context, want, why in cases:
        try:
            got = H._call(fn, peak, context, card)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc}")
        if got is None:
            return H._report(name, False, H._RETURNED_NONE)
        if not isinstance(got, bool):
            return H._report(name, False, f"return True or False; got {type(got).__name__}")
        if got != want:
            where = (f"(peak {peak / 2**20:,.0f} MiB, context {context / 2**20:,.0f} MiB, card "
                     f"{card:,} MiB: {'fits' if want else 'does not fit'})")
            return H._report(name, False, f"{why or 'peak + context <= card_mib * 2**20'} "
                             f"{where}")
    return H._report(name, True, "peak + CUDA context <= the card's MiB * 2^20, at the "
                     "boundaries where the classic slips differ")
