"""Lesson 02's exercise: LoRA's forward pass, ``y = x W^T + (alpha / r) x A^T B^T``.

The learner writes ``f(x, W, A, B, alpha, r) -> y`` (shapes as in ``labkit.lora``: ``W`` is
``d x k``, ``A`` is ``r x k``, ``B`` is ``d x r``, ``x`` is ``(..., k)``).
:func:`check_lora_forward` compares it with an independent float64 reference on square and
rectangular layers and a batch of sequences, and names the classic mistake (a missing or
upside-down scale, a missing frozen path, an untransposed matrix, an in-place change...).

Imports: ``labkit.checks.harness`` (the shared harness); torch on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...

# torch is imported on first use (``H._need_torch(globals())``), by the checks on tensors only:
# importing labkit.checks then stays torch-free.
torch = None


def _lora_reference(x, W, A, B, alpha, r):
    """y = x W^T + (alpha / r) (x A^T) B^T, in float64."""
    return x @ W.T + (alpha / r) * ((x @ A.T) @ B.T)


# Each mistake: (description and fix, function of the same inputs). Tried in order; the
# first one that reproduces the learner's output on every input is reported.
_LORA_MISTAKES = [
    (
        "the scale alpha / r is missing: the update x A^T B^T must be multiplied by alpha / r",
        lambda x, W, A, B, a, r: x @ W.T + (x @ A.T) @ B.T,
    ),
    (
        "the scale is upside down: you multiplied by r / alpha; LoRA scales by alpha / r",
        lambda x, W, A, B, a, r: x @ W.T + (r / a) * ((x @ A.T) @ B.T),
    ),
    (
        "the update is scaled by alpha instead of alpha / r (divide by the rank r too)",
        lambda x, W, A, B, a, r: x @ W.T + a * ((x @ A.T) @ B.T),
    ),
    (
        "the update is divided by r but not multiplied by alpha; the scale is alpha / r",
        lambda x, W, A, B, a, r: x @ W.T + (1 / r) * ((x @ A.T) @ B.T),
    ),
    (
        "the frozen path is missing: y must include x W^T, the pretrained layer's output, "
        "plus the scaled update",
        lambda x, W, A, B, a, r: (a / r) * ((x @ A.T) @ B.T),
    ),
    (
        "alpha / r scales the frozen path too; only the update x A^T B^T is scaled",
        lambda x, W, A, B, a, r: (a / r) * (x @ W.T + (x @ A.T) @ B.T),
    ),
    (
        "only the update is returned, and unscaled: y = x W^T + (alpha / r) x A^T B^T",
        lambda x, W, A, B, a, r: (x @ A.T) @ B.T,
    ),
    (
        "the frozen weight is used untransposed: W is d x k, so the frozen path is x @ W.T",
        lambda x, W, A, B, a, r: x @ W + (a / r) * ((x @ A.T) @ B.T),
    ),
    (
        "A and B are applied untransposed (x @ B @ A): A is r x k and B is d x r, so the "
        "update is (x @ A.T) @ B.T, A first",
        lambda x, W, A, B, a, r: x @ W.T + (a / r) * (x @ B @ A),
    ),
]


_BATCH_HINT = (
    " It fails only for a batch of sequences (b, t, k): multiply with @ and transpose the "
    "weights (W.T), never x, so any leading dimensions pass through."
)


def _lora_case(rng: torch.Generator, n_shape, d, k, r):
    x = torch.randn(*n_shape, k, generator=rng, dtype=torch.float64)
    W = torch.randn(d, k, generator=rng, dtype=torch.float64)
    A = torch.randn(r, k, generator=rng, dtype=torch.float64)
    B = torch.randn(d, r, generator=rng, dtype=torch.float64)  # non-zero: a trained adapter
    return x, W, A, B


def check_lora_forward(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(x, W, A, B, alpha, r) -> y``, LoRA's forward pass.

    ``y = x W^T + (alpha / r) x A^T B^T`` with ``x: (n, k)`` (or ``(b, t, k)``), ``W: (d, k)``,
    ``A: (r, k)``, ``B: (d, r)``, ``y: (n, d)``. Inputs are float64 with a non-zero ``B`` (a
    trained adapter, so a wrong update shows). First a square layer (d = k, so a transposed
    matrix gives wrong numbers, not an error), then rectangular ones and a batch of
    sequences; alpha and r are chosen so that alpha / r, r / alpha, alpha and 1 / r differ.

    Named mistakes: missing scale; r / alpha; alpha or 1 / r alone; missing frozen path;
    scale on both paths; W, A or B untransposed or in the wrong order; wrong output shape;
    changing W, A or B in place; a shape error inside the function; not returning a tensor.
    """
    name = "lora_forward"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    rng = torch.Generator().manual_seed(seed)
    cases = [((5,), 6, 6, 2, 6.0), ((4,), 10, 12, 3, 12.0), ((2, 3), 7, 5, 2, 10.0)]
    for n_shape, d, k, r, alpha in cases:
        x, W, A, B = _lora_case(rng, n_shape, d, k, r)
        originals = [t.clone() for t in (x, W, A, B)]
        shapes = f"x {H._shape(x)}, W {H._shape(W)}, A {H._shape(A)}, B {H._shape(B)}"
        try:
            y = H._call(fn, x, W, A, B, alpha, r)
        except H._LearnerError as exc:
            hint = ""
            if "shape" in str(exc) or "size" in str(exc):
                hint = (
                    " Shapes: W is d x k, A is r x k, B is d x r; so x @ W.T is (n, d) and "
                    "(x @ A.T) @ B.T goes (n, k) -> (n, r) -> (n, d)."
                )
            if len(n_shape) > 1:
                hint += _BATCH_HINT
            return H._report(name, False, f"your function raised {exc} with {shapes}.{hint}")
        for label, before, after in zip("xWAB", originals, (x, W, A, B), strict=True):
            if not torch.equal(before, after):
                return H._report(
                    name,
                    False,
                    f"your function changed {label} in place (e.g. with += or .mul_); "
                    "the frozen weight and the inputs must stay as they are: build new tensors",
                )
        if not isinstance(y, torch.Tensor):
            got = type(y).__name__
            extra = " (did you forget `return`?)" if y is None else ""
            return H._report(name, False, f"return a torch.Tensor y; got {got}{extra}")
        want = _lora_reference(x, W, A, B, alpha, r)
        if tuple(y.shape) != tuple(want.shape):
            batch = len(n_shape) > 1
            extra = _BATCH_HINT if batch else ""
            return H._report(
                name,
                False,
                f"y has shape {H._shape(y)}, expected {H._shape(want)} = (n, d) for "
                f"{shapes}.{extra}",
            )
        y = y.to(torch.float64)
        if torch.allclose(y, want, rtol=1e-5, atol=1e-8):
            continue
        for why, mistake in _LORA_MISTAKES:
            try:
                alt = mistake(x, W, A, B, alpha, r)
            except RuntimeError:  # the mistake is impossible with these shapes
                continue
            if alt.shape == y.shape and torch.allclose(y, alt, rtol=1e-5, atol=1e-8):
                return H._report(name, False, f"{why} (seen with alpha = {alpha:g}, r = {r}).")
        err = (y - want).abs().max().item()
        return H._report(
            name,
            False,
            f"y differs from x W^T + (alpha / r) x A^T B^T by up to {err:.3g} with {shapes}, "
            f"alpha = {alpha:g}, r = {r}; compute the frozen path and the scaled update "
            "separately and compare each with the formula",
        )
    return H._report(
        name, True, f"matches x W^T + (alpha / r) x A^T B^T on {len(cases)} random layers"
    )
