"""Exercise checks: run a learner's function on random inputs and say exactly what is wrong.

Each ``check_*`` function takes the learner's function (or value), runs it on several random
inputs, compares with an independent reference computed here, and, when they differ, tries
the classic mistakes one by one (a missing scale, a transposed matrix, one moment instead of
two...) to name the one the learner made. A check never raises on a wrong answer: it prints
one line and returns a :class:`CheckResult`.

The protocol that ``python -m labkit.classroom check`` reads from executed notebooks is that
line::

    CHECK <name>: PASS - <message>
    CHECK <name>: FAIL - <message>

An exercise stub that still raises ``NotImplementedError`` is not caught: the cell fails with
the stub's own message ("Exercise ...: see the hint above"), so a learner running a student
notebook stops at the first exercise they have not done. Any other exception from the
learner's code is caught and reported as a FAIL that quotes it.

The exercises and their checks (tensor shapes follow ``labkit.lora``: ``W`` is ``d x k``,
``A`` is ``r x k``, ``B`` is ``d x r``, ``x`` is ``(..., k)``):

=========================  =====================================================  ======
check                      the learner writes                                     lesson
=========================  =====================================================  ======
check_lora_forward         ``f(x, W, A, B, alpha, r) -> y``, y = xW^T + (alpha/r) xA^T B^T  02
check_lora_param_count     ``f(d, k, r) -> int``, r (d + k)                       03
check_absmax_block         ``f(block, code) -> (codes, absmax)`` for one block    04
check_absmax_quantize      ``f(x, code, blocksize) -> (codes, absmax)``, all blocks  04
check_memory_term          ``f(...) -> bytes`` for a named term (see MEMORY_TERMS)  05, 06
check_shard_loss           ``f(logits, labels, n_tokens, world_size) -> loss``,  09
                           world_size * S_r / N (S_r: the shard's summed token
                           losses, N: answer tokens of the whole global batch)
=========================  =====================================================  ======
"""

from __future__ import annotations

import math
import numbers
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

# torch is imported on first use (``_need_torch``), by the checks on tensors only: a check of
# plain arithmetic (a count, a number of bytes) then runs at once, also where torch is missing.
torch = None

__all__ = [
    "CHECK_LINE",
    "MEMORY_TERMS",
    "CheckResult",
    "check_absmax_block",
    "check_absmax_quantize",
    "check_lora_forward",
    "check_lora_param_count",
    "check_memory_term",
    "check_shard_loss",
    "parse_check_lines",
]

#: One protocol line, as printed by every check and parsed by ``labkit.classroom``.
CHECK_LINE = re.compile(r"^CHECK (?P<name>\S+): (?P<status>PASS|FAIL)(?: - (?P<message>.*))?$")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check's name (no spaces), e.g. ``"lora_forward"``.
        passed: True when the learner's answer agreed with the reference on every input.
        message: what was checked, or exactly what is wrong and how to fix it (one line).
    """

    name: str
    passed: bool
    message: str

    @property
    def line(self) -> str:
        """The protocol line: ``CHECK <name>: PASS|FAIL - <message>``."""
        return f"CHECK {self.name}: {'PASS' if self.passed else 'FAIL'} - {self.message}"

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        # The check printed its line already; showing the object again would repeat it.
        return None


def parse_check_lines(text: str) -> list[CheckResult]:
    """Every protocol line in ``text`` (e.g. a cell's stdout), in order."""
    out = []
    for line in text.splitlines():
        m = CHECK_LINE.match(line.strip())
        if m:
            out.append(CheckResult(m["name"], m["status"] == "PASS", m["message"] or ""))
    return out


def _need_torch() -> None:
    global torch
    if torch is None:
        from labkit._deps import torch as _torch  # one clear line when torch is missing

        torch = _torch


def _report(name: str, passed: bool, message: str) -> CheckResult:
    result = CheckResult(name, passed, " ".join(message.split()))
    print(result.line)
    return result


class _LearnerError(Exception):
    """The learner's function raised; carries a one-line description."""


def _call(fn: Callable, *args):
    """Call the learner's function; NotImplementedError (an unsolved stub) passes through."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:  # the learner's bug, reported, never raised
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise _LearnerError(msg) from exc


def _shape(t) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _not_callable(name: str, fn) -> CheckResult | None:
    if callable(fn):
        return None
    return _report(
        name,
        False,
        f"pass your function itself, e.g. check_{name}(my_function), not its result "
        f"(got {type(fn).__name__})",
    )


#: What a check says when the learner's function returned None.
_RETURNED_NONE = "your function returned None; did you forget `return`?"


def _not_a_number(name: str, got, what: str) -> CheckResult | None:
    """A FAIL report when ``got`` is None or not a real number (``what``: e.g. "an int")."""
    if got is None:
        return _report(name, False, _RETURNED_NONE)
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return _report(name, False, f"return {what}; got {type(got).__name__}")
    return None


# ---------------------------------------------------------------------- LoRA forward


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


def check_lora_forward(fn: Callable, seed: int = 0) -> CheckResult:
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
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    _need_torch()
    rng = torch.Generator().manual_seed(seed)
    cases = [((5,), 6, 6, 2, 6.0), ((4,), 10, 12, 3, 12.0), ((2, 3), 7, 5, 2, 10.0)]
    for n_shape, d, k, r, alpha in cases:
        x, W, A, B = _lora_case(rng, n_shape, d, k, r)
        originals = [t.clone() for t in (x, W, A, B)]
        shapes = f"x {_shape(x)}, W {_shape(W)}, A {_shape(A)}, B {_shape(B)}"
        try:
            y = _call(fn, x, W, A, B, alpha, r)
        except _LearnerError as exc:
            hint = ""
            if "shape" in str(exc) or "size" in str(exc):
                hint = (
                    " Shapes: W is d x k, A is r x k, B is d x r; so x @ W.T is (n, d) and "
                    "(x @ A.T) @ B.T goes (n, k) -> (n, r) -> (n, d)."
                )
            if len(n_shape) > 1:
                hint += _BATCH_HINT
            return _report(name, False, f"your function raised {exc} with {shapes}.{hint}")
        for label, before, after in zip("xWAB", originals, (x, W, A, B), strict=True):
            if not torch.equal(before, after):
                return _report(
                    name,
                    False,
                    f"your function changed {label} in place (e.g. with += or .mul_); "
                    "the frozen weight and the inputs must stay as they are: build new tensors",
                )
        if not isinstance(y, torch.Tensor):
            got = type(y).__name__
            extra = " (did you forget `return`?)" if y is None else ""
            return _report(name, False, f"return a torch.Tensor y; got {got}{extra}")
        want = _lora_reference(x, W, A, B, alpha, r)
        if tuple(y.shape) != tuple(want.shape):
            batch = len(n_shape) > 1
            extra = _BATCH_HINT if batch else ""
            return _report(
                name,
                False,
                f"y has shape {_shape(y)}, expected {_shape(want)} = (n, d) for {shapes}.{extra}",
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
                return _report(name, False, f"{why} (seen with alpha = {alpha:g}, r = {r}).")
        err = (y - want).abs().max().item()
        return _report(
            name,
            False,
            f"y differs from x W^T + (alpha / r) x A^T B^T by up to {err:.3g} with {shapes}, "
            f"alpha = {alpha:g}, r = {r}; compute the frozen path and the scaled update "
            "separately and compare each with the formula",
        )
    return _report(
        name, True, f"matches x W^T + (alpha / r) x A^T B^T on {len(cases)} random layers"
    )


# ---------------------------------------------------------------------- parameter count


_COUNT_MISTAKES = [
    ("that is d * k, the frozen weight W; only A (r x k) and B (d x r) train",
     lambda d, k, r: d * k),
    ("that is r * (d * k): the two factors are added, r * d + r * k = r * (d + k)",
     lambda d, k, r: r * d * k),
    ("that is only B (d x r); A (r x k) trains too", lambda d, k, r: d * r),
    ("that is only A (r x k); B (d x r) trains too", lambda d, k, r: r * k),
    ("that adds the frozen weight d * k; only A and B train",
     lambda d, k, r: d * k + r * (d + k)),
    ("that is 2 * r * d, right only for a square layer; A has r * k entries, B has d * r",
     lambda d, k, r: 2 * r * d),
    ("that is 2 * r * k, right only for a square layer; A has r * k entries, B has d * r",
     lambda d, k, r: 2 * r * k),
    ("that is r + d + k: each factor is a matrix, so multiply: r * d + r * k",
     lambda d, k, r: r + d + k),
    ("that is (r + d) * k or similar; the count is r * d + r * k",
     lambda d, k, r: (r + d) * k),
    ("that is r * r * (d + k); the rank appears once: r * (d + k)",
     lambda d, k, r: r * r * (d + k)),
]


def check_lora_param_count(fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``fn(d, k, r) -> int``: trainable parameters of a rank-r adapter on a d x k weight.

    The reference is ``r * d + r * k`` (B is d x r, A is r x k), written out independently of
    ``labkit.lora.lora_param_count``. Several rectangular layers are tried (d != k, so mixing
    them up shows), then a square one.

    Named mistakes: d * k; r * d * k; only A or only B; adding the frozen weight;
    2 r d or 2 r k (square-layer shortcuts); r + d + k; r squared; a float instead of an int.
    """
    name = "lora_param_count"
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    rng = random.Random(seed)
    cases = [(rng.choice([64, 96, 128, 320]), rng.choice([48, 80, 200]), rng.choice([2, 4, 8]))
             for _ in range(4)] + [(4096, 11008, 16), (1024, 1024, 8)]
    for d, k, r in cases:
        want = r * d + r * k
        try:
            got = _call(fn, d, k, r)
        except _LearnerError as exc:
            return _report(name, False, f"your function raised {exc} for d={d}, k={k}, r={r}")
        if (bad := _not_a_number(name, got, "a number (an int)")) is not None:
            return bad
        if not isinstance(got, numbers.Integral):
            if got == want:
                return _report(
                    name,
                    False,
                    f"the value is right ({want:,}) but a count is a whole number: return an "
                    f"int, not {type(got).__name__} (use *, not / , or int(...))",
                )
        elif got == want:
            continue
        for why, mistake in _COUNT_MISTAKES:
            if got == mistake(d, k, r) != want:
                return _report(
                    name, False, f"for d={d}, k={k}, r={r} you return {got:,}: {why} = {want:,}"
                )
        return _report(
            name,
            False,
            f"for d={d}, k={k}, r={r} you return {got:,}, expected {want:,}: A is r x k and B "
            "is d x r, so r * k + d * r",
        )
    return _report(name, True, f"r * (d + k) on {len(cases)} layers, e.g. 4096 x 11008 at r=16")


# ---------------------------------------------------------------------- absmax quantization


def _nearest(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code level (argmin of the distance), float64."""
    return (scaled.double().unsqueeze(-1) - code.double()).abs().argmin(dim=-1)


def _floor_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the largest level <= the value (rounding down instead of to nearest)."""
    order = torch.argsort(code)
    pos = torch.searchsorted(code.double()[order].contiguous(), scaled.double(), right=True) - 1
    return order[pos.clamp(0, code.numel() - 1)]


def _ceil_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(code)
    pos = torch.searchsorted(code.double()[order].contiguous(), scaled.double(), right=False)
    return order[pos.clamp(0, code.numel() - 1)]


def _blocks(x: torch.Tensor, starts_stops) -> torch.Tensor:
    return torch.stack([x[a:b].abs().max() for a, b in starts_stops])


def _absmax_reference(x, bs):
    n = x.numel()
    return _blocks(x, [(i, min(i + bs, n)) for i in range(0, n, bs)])


def _absmax_mistakes(x, bs):
    n = x.numel()
    spans = [(i, min(i + bs, n)) for i in range(0, n, bs)]
    return [
        ("the absmax is max(x), not max(|x|): a block whose largest magnitude is negative "
         "gets the wrong scale; use x.abs().max()",
         torch.stack([x[a:b].max() for a, b in spans])),
        ("one absmax for the whole tensor: each block of `blocksize` values has its own absmax",
         x.abs().max().expand(len(spans))),
        ("off by one at the block boundaries: each block reaches one value into the next "
         "(x[i * blocksize : (i + 1) * blocksize + 1]); Python slices exclude the stop, so "
         "x[i * blocksize : (i + 1) * blocksize] is exactly one block",
         _blocks(x, [(a, min(b + 1, n)) for a, b in spans])),
        ("off by one at the block boundaries: each block starts one value late "
         "(x[i * blocksize + 1 : ...]); block i is x[i * blocksize : (i + 1) * blocksize]",
         _blocks(x, [(a + 1, min(b + 1, n)) for a, b in spans if a + 1 < n])),
        ("off by one at the block boundaries: each block misses its last value "
         "(x[i * blocksize : (i + 1) * blocksize - 1]); the stop of a slice is already excluded",
         _blocks(x, [(a, max(a + 1, b - 1)) for a, b in spans])),
    ]


def _code_mistakes(x, code, absmax_per_value, global_absmax):
    scaled = x.double() / absmax_per_value
    return [
        ("the values were not divided by their block's absmax before looking up the code: "
         "scale first, x / absmax lies in [-1, 1] like the codebook",
         _nearest(x, code)),
        ("rounding goes down (the largest level <= the value) instead of to the nearest "
         "level: pick argmin |x / absmax - code|",
         _floor_level(scaled, code)),
        ("rounding goes up (the smallest level >= the value) instead of to the nearest level: "
         "pick argmin |x / absmax - code|",
         _ceil_level(scaled, code)),
        ("the values were multiplied by the absmax instead of divided by it",
         _nearest(x.double() * absmax_per_value, code)),
        ("the values were divided by the absmax of the whole tensor, not of their own block",
         _nearest(x.double() / global_absmax, code)),
    ]


def _as_index_tensor(codes, n: int, what: str):
    if isinstance(codes, (list, tuple)) or hasattr(codes, "__array__"):  # a list, NumPy
        codes = torch.as_tensor(codes)
    if not isinstance(codes, torch.Tensor):
        raise _LearnerError(f"{what} must be a tensor of code indices, got {type(codes).__name__}")
    if codes.is_floating_point():
        if not torch.equal(codes, codes.round()):
            raise _LearnerError(
                f"{what} holds fractions (e.g. {codes.flatten()[0].item():.3g}): return the "
                "*index* of the nearest level (0-15), not the scaled value or the level itself"
            )
    if codes.numel() != n:
        raise _LearnerError(
            f"{what} has {codes.numel()} entries for {n} values: one code index per value"
        )
    return codes.reshape(-1).long()


def _check_absmax(name, fn, cases, call) -> CheckResult:
    """Shared body of the two absmax checks; ``call(fn, x, code, bs)`` runs the learner's."""
    for x, code, bs in cases:
        n = x.numel()
        n_blocks = -(-n // bs)
        try:
            out = call(fn, x, code, bs)
        except _LearnerError as exc:
            return _report(name, False, f"your function raised {exc} (x has {n} values, "
                                        f"blocksize {bs})")
        if not (isinstance(out, tuple) and len(out) == 2):
            return _report(name, False, "return a pair (codes, absmax), e.g. `return idx, "
                                        f"absmax`; got {type(out).__name__}")
        codes, absmax = out
        absmax = torch.as_tensor(absmax, dtype=torch.float64).reshape(-1)
        want_absmax = _absmax_reference(x.double(), bs)
        if absmax.numel() != n_blocks:
            why = (
                f"absmax has {absmax.numel()} values for {n} values in blocks of {bs}: there "
                f"are ceil({n} / {bs}) = {n_blocks} blocks"
            )
            if absmax.numel() == n_blocks - 1:
                why += " (the last, partial block counts too: use range(0, n, blocksize))"
            return _report(name, False, why)
        if not torch.allclose(absmax, want_absmax, rtol=1e-6, atol=0):
            for why, alt in _absmax_mistakes(x.double(), bs):
                if alt.numel() == absmax.numel() and torch.allclose(absmax, alt, rtol=1e-6):
                    return _report(name, False, why)
            return _report(
                name, False, f"absmax differs from max |x| per block (block 0: you have "
                f"{absmax[0].item():.4g}, expected {want_absmax[0].item():.4g})"
            )
        try:
            codes = _as_index_tensor(codes, n, "codes")
        except _LearnerError as exc:
            return _report(name, False, str(exc))
        per_value = want_absmax.repeat_interleave(bs)[:n]
        want = _nearest(x.double() / per_value, code)
        if torch.equal(codes, want):
            continue
        for why, alt in _code_mistakes(x, code, per_value, want_absmax.max()):
            if torch.equal(codes, alt.long()):
                return _report(name, False, why)
        bad = (codes != want).nonzero()[0].item()
        return _report(
            name, False, f"{int((codes != want).sum())} of {n} code indices differ, the first "
            f"at position {bad}: x = {x[bad].item():.4g}, absmax {per_value[bad].item():.4g}, "
            f"scaled {x[bad].item() / per_value[bad].item():.4g}; the nearest level is index "
            f"{want[bad].item()} ({code[want[bad]].item():.4g}), you chose {codes[bad].item()}"
        )
    return _report(name, True, f"codes and absmax match the reference on {len(cases)} inputs")


def _codebooks():
    """Two 16-level codebooks: evenly spaced (Int4-like) and normal-quantile (NF4-like)."""
    even = torch.linspace(-1.0, 1.0, 16)
    p = torch.linspace(0.03, 0.97, 16, dtype=torch.float64)
    normal = torch.special.ndtri(p)
    return [even, (normal / normal.abs().max()).float()]


def check_absmax_block(fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``fn(block, code) -> (codes, absmax)``: absmax quantization of ONE block.

    ``absmax = max |block|``; ``codes[i] = argmin_j |block[i] / absmax - code[j]|`` (an index
    0..15 into the 16-level ``code``). ``absmax`` may be a float or a 0-d / 1-element tensor.

    Named mistakes: max(x) instead of max |x|; no division by the absmax; floor or ceiling
    instead of nearest; multiplying by the absmax; returning levels instead of indices.
    """
    name = "absmax_block"
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    _need_torch()
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i, code in enumerate(_codebooks() * 2):
        x = torch.randn(64, generator=gen) * (0.02 if i % 2 else 3.0)
        if i == 1:
            x[torch.argmax(x.abs())] = -x.abs().max()  # the largest magnitude is negative
        cases.append((x, code, 64))
    return _check_absmax(name, fn, cases, lambda f, x, code, bs: _call(f, x, code))


def check_absmax_quantize(fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``fn(x, code, blocksize) -> (codes, absmax)``: blockwise absmax over a 1-D tensor.

    ``absmax[b] = max |x[b*bs:(b+1)*bs]|`` for ceil(n / bs) blocks (the last may be partial);
    ``codes[i]`` is the index of the level nearest ``x[i] / absmax[i // bs]``. Inputs mix
    block sizes and lengths that are and are not multiples of the block size, with a large
    value planted at each block's first position so that an off-by-one block shows.

    Named mistakes: off-by-one block boundaries (overlapping, shifted or short blocks); a
    missing partial last block; one absmax for everything; max(x) instead of max |x|; no
    division; floor or ceiling rounding; multiplying by the absmax.
    """
    name = "absmax_quantize"
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    _need_torch()
    gen = torch.Generator().manual_seed(seed)
    cases = []
    sizes = [(64, 8), (96, 16), (70, 8), (40, 32)]
    for i, ((n, bs), code) in enumerate(zip(sizes, _codebooks() * 2, strict=True)):
        x = torch.randn(n, generator=gen)
        # Plant each block's largest magnitude at its first value (even cases) or its last
        # (odd cases), alternating sign, so that any off-by-one block changes an absmax.
        at = slice(0, None, bs) if i % 2 == 0 else slice(bs - 1, None, bs)
        m = len(x[at])
        sign = torch.where(torch.arange(m) % 2 == 0, 4.0, -4.0)
        x[at] = sign * (1 + torch.rand(m, generator=gen))
        cases.append((x, code, bs))
    return _check_absmax(name, fn, cases, lambda f, x, code, bs: _call(f, x, code, bs))


# ---------------------------------------------------------------------- memory terms


@dataclass(frozen=True)
class _Term:
    signature: str
    formula: str
    reference: Callable
    mistakes: tuple
    cases: tuple


#: The memory terms ``check_memory_term`` knows: name -> what the learner's function computes.
MEMORY_TERMS: dict[str, _Term] = {
    "adamw_state": _Term(
        signature="f(n_params) -> bytes",
        formula="AdamW keeps two moments (m and v) per trainable parameter, each fp32 "
                "(4 bytes): 8 * n_params bytes",
        reference=lambda n: 8 * n,
        mistakes=(
            ("4 bytes per parameter: that is one fp32 moment (or two 16-bit ones); AdamW "
             "keeps two moments, m and v, each in fp32", lambda n: 4 * n),
            ("2 bytes per parameter: that is one 16-bit moment; AdamW keeps two fp32 moments",
             lambda n: 2 * n),
            ("64 per parameter: that counts bits, not bytes (2 moments x 32 bits); divide by 8",
             lambda n: 64 * n),
            ("32 per parameter: bits of one moment; AdamW keeps two, and memory is in bytes",
             lambda n: 32 * n),
            ("12 bytes per parameter adds an fp32 copy of the weights; the term asked for is "
             "the optimizer state only", lambda n: 12 * n),
            ("16 bytes per parameter adds weights and gradients; the term asked for is the "
             "optimizer state only", lambda n: 16 * n),
            ("that looks like gigabytes; return bytes (no division by 1e9 or 2**30)",
             lambda n: 8 * n / 1e9),
        ),
        cases=((1_000,), (4_194_304,), (7_000_000_000,), (12_345,)),
    ),
    "nf4_weights": _Term(
        signature="f(n_params, blocksize) -> bytes",
        formula="4-bit codes take n / 2 bytes, plus one fp32 absmax (4 bytes) per block of "
                "`blocksize` weights: n / 2 + 4 * n / blocksize",
        reference=lambda n, bs: n // 2 + 4 * (n // bs),
        mistakes=(
            ("the block scales are missing: every block of `blocksize` weights also stores "
             "its fp32 absmax, 4 bytes", lambda n, bs: n // 2),
            ("4 bytes per weight: that counts 4 bits as 4 bytes; 4 bits are half a byte",
             lambda n, bs: 4 * n + 4 * (n // bs)),
            ("the scales are counted in bits: 32 bits per absmax are 4 bytes",
             lambda n, bs: n // 2 + 32 * (n // bs)),
            ("one absmax per weight instead of per block: there are n / blocksize blocks",
             lambda n, bs: n // 2 + 4 * n),
            ("the absmax is counted as 2 bytes; bitsandbytes stores it as fp32, 4 bytes",
             lambda n, bs: n // 2 + 2 * (n // bs)),
            ("that is the whole thing in bits; divide by 8 for bytes",
             lambda n, bs: 4 * n + 32 * (n // bs)),
        ),
        cases=((4096, 64), (1_048_576, 64), (7_000_000_000, 64), (65_536, 128)),
    ),
    "qlora_weights": _Term(
        signature="f(n_base, n_adapter) -> bytes",
        formula="QLoRA stores the frozen base in NF4 (4 bits + an fp32 absmax per 64 "
                "weights = 4.5 bits) and keeps the adapters in bf16 (2 bytes): "
                "n_base * 4.5 / 8 + 2 * n_adapter",
        reference=lambda nb, na: nb * 9 // 16 + 2 * na,
        mistakes=(
            ("the adapters are compressed too: in QLoRA only the frozen base is 4-bit; the "
             "adapters train in bf16, 2 bytes each", lambda nb, na: (nb + na) * 4.5 / 8),
            ("the block scales are missing: NF4 with blocks of 64 costs 4 + 32 / 64 = 4.5 bits "
             "per weight, not 4", lambda nb, na: nb / 2 + 2 * na),
            ("the block scales are missing and the adapters are compressed too",
             lambda nb, na: (nb + na) / 2),
            ("the base is counted at 16 bits: QLoRA quantizes the frozen base to 4 bits",
             lambda nb, na: 2 * nb + 2 * na),
            ("the base is 4-bit but the adapters are counted at 4 bytes (fp32); they are bf16 "
             "here, 2 bytes", lambda nb, na: nb * 4.5 / 8 + 4 * na),
            ("the compression factor is applied to the adapters instead of the base",
             lambda nb, na: 2 * nb + na * 4.5 / 8),
        ),
        cases=((6_738_415_616, 39_976_960), (1_048_576, 16_384), (64_000, 1_000)),
    ),
}


def check_memory_term(fn: Callable, term: str = "adamw_state") -> CheckResult:
    """Check a function that returns the bytes of one memory term.

    Terms (see ``MEMORY_TERMS``): ``"adamw_state"`` ``f(n_params)``, 8 bytes per parameter;
    ``"nf4_weights"`` ``f(n_params, blocksize)``, codes plus fp32 block scales;
    ``"qlora_weights"`` ``f(n_base, n_adapter)``, a 4.5-bit base plus bf16 adapters. The
    inputs are multiples of 64 (whole blocks and bytes), so the exact answer is an integer;
    a float equal to it is accepted.

    Named mistakes per term: one moment instead of two, bf16 instead of fp32, bits instead of
    bytes, gigabytes instead of bytes, missing block scales, compressing the adapters...

    Raises:
        ValueError: an unknown ``term`` (the message lists the known ones). This is the
            lesson author's error, not the learner's.
    """
    if term not in MEMORY_TERMS:
        raise ValueError(f"unknown memory term {term!r}; known: {', '.join(MEMORY_TERMS)}")
    spec = MEMORY_TERMS[term]
    name = f"memory_{term}"
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    for args in spec.cases:
        want = spec.reference(*args)
        shown = ", ".join(f"{a:,}" for a in args)
        try:
            got = _call(fn, *args)
        except _LearnerError as exc:
            return _report(name, False, f"your function raised {exc} for ({shown})")
        if (bad := _not_a_number(name, got, "a number of bytes")) is not None:
            return bad
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        for why, mistake in spec.mistakes:
            alt = mistake(*args)
            if math.isclose(got, alt, rel_tol=1e-9) and not math.isclose(alt, want):
                return _report(name, False, f"for ({shown}) you return {got:,.6g}: {why}")
        return _report(
            name, False, f"for ({shown}) you return {got:,.6g}, expected {want:,}: {spec.formula}"
        )
    return _report(name, True, f"{spec.formula.split(':')[-1].strip()} on {len(spec.cases)} inputs")


# ---------------------------------------------------------------------- data-parallel loss


def _shard_stats(logits, labels, ignore_index: int) -> dict:
    """Per-shard numbers the reference and the mistakes are built from (float64, no graph)."""
    from labkit.train import lm_loss

    with torch.no_grad():
        sums = [lm_loss(lg, lb, reduction="sum").double() for lg, lb in zip(logits, labels,
                                                                           strict=True)]
        clamped = [lm_loss(lg, lb.clamp(min=0), reduction="sum").double()
                   for lg, lb in zip(logits, labels, strict=True)]
    return {
        "S": torch.stack(sums),  # summed token losses of each shard
        "n": torch.tensor([float((lb != ignore_index).sum()) for lb in labels],
                          dtype=torch.float64),  # answer tokens of each shard
        "P": torch.tensor([float(lb.numel()) for lb in labels], dtype=torch.float64),
        "S0": torch.stack(clamped),  # the -100 positions scored as class 0
    }


_SHARD_FIX = "return world_size * (the shard's SUM of token losses) / n_tokens"

# Each mistake: (description and fix, per-rank values from the shard stats, N and W).
_SHARD_MISTAKES = [
    ("that is the shard's own mean loss (lm_loss's default, reduction='mean'): with unequal "
     "token counts the average of shard means weights a short shard's tokens more; divide "
     "the shard's SUM by the global n_tokens, times world_size",
     lambda s, N, W: s["S"] / s["n"]),
    ("that is the shard's SUM / n_tokens, which is right up to the factor world_size: DDP "
     "divides the summed gradients by world_size: multiply by world_size",
     lambda s, N, W: s["S"] / N),
    ("that is world_size times the shard's own mean: dividing by this shard's count of answer "
     "tokens weights a short shard's tokens more; divide the shard's SUM by the global "
     "n_tokens (then times world_size)",
     lambda s, N, W: W * s["S"] / s["n"]),
    ("that is the shard's own mean divided by world_size: DDP already divides by world_size, "
     f"and a shard mean weights a short shard's tokens more; {_SHARD_FIX}",
     lambda s, N, W: s["S"] / s["n"] / W),
    ("world_size divides instead of multiplying (SUM / n_tokens / world_size): DDP divides "
     "the summed gradients by world_size, so each rank must multiply by it",
     lambda s, N, W: s["S"] / (N * W)),
    (f"that is the shard's SUM of token losses, never divided by n_tokens; {_SHARD_FIX}",
     lambda s, N, W: s["S"]),
    ("the division by n_tokens is missing (world_size * SUM): divide by n_tokens, the answer "
     "tokens of the whole global batch",
     lambda s, N, W: W * s["S"]),
    ("the SUM is divided twice, by this shard's token count and by n_tokens: divide it once, "
     "by the global n_tokens, and multiply by world_size",
     lambda s, N, W: W * s["S"] / (s["n"] * N)),
    ("that is the mean over all b * T positions (e.g. reduction='none' then .mean()), the "
     "positions labelled -100 included: only answer tokens count; divide the SUM by n_tokens, "
     "times world_size",
     lambda s, N, W: s["S"] / s["P"]),
    ("that divides by labels.numel(), all b * T positions, the -100 ones included: only answer "
     f"tokens count, and n_tokens already counts them for the whole batch; {_SHARD_FIX}",
     lambda s, N, W: W * s["S"] / s["P"]),
    ("the positions labelled -100 are scored as class 0 (labels clamped or replaced): pass "
     "ignore_index=-100 to cross_entropy (or use lm_loss(logits, labels, reduction='sum')) so "
     "they carry no loss",
     lambda s, N, W: W * s["S0"] / N),
]


def _shard_case(rng: random.Random, gen: torch.Generator, W: int, b: int, T: int, V: int,
                ignore_index: int):
    """W shards of (b, T) tokens; each row is a prompt (-100) then an answer, and the shards
    hold pairwise different numbers of answer tokens (so a shard mean is visibly wrong)."""
    for _ in range(1000):
        lengths = [[rng.randint(1, T - 1) for _ in range(b)] for _ in range(W)]
        counts = [sum(row) for row in lengths]
        # n_tokens must differ from b * T and b * T / W, or dividing by n_tokens (times or
        # over W) and dividing by the b * T positions give the same numbers
        if (len(set(counts)) == W and max(counts) >= 2 * min(counts)
                and sum(counts) not in (b * T, b * T / W)):
            break
    else:  # not reached for the sizes used here
        raise AssertionError("no shards with different token counts")
    logits, labels = [], []
    for rows in lengths:
        lab = torch.randint(0, V, (b, T), generator=gen)
        for i, n_answer in enumerate(rows):
            lab[i, : T - n_answer] = ignore_index
        labels.append(lab)
        logits.append(2.0 * torch.randn(b, T, V, generator=gen))
    return logits, labels


def check_shard_loss(fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``fn(logits, labels, n_tokens, world_size) -> loss``, one DDP rank's loss.

    ``logits (b, T, V)`` and ``labels (b, T)`` (-100 where a position carries no loss) are one
    rank's shard; ``n_tokens`` counts the answer tokens (labels != -100) of the WHOLE global
    batch (an int in the first case, a 0-dim float tensor, as after an all-reduce, then a 0-dim
    long tensor); ``world_size`` is W. The answer is ``W * S_r / N``, with S_r the SUM of the
    shard's token cross-entropies and N = n_tokens: DDP averages the ranks' gradients,
    (1 / W) sum_r grad(W S_r / N) = grad(sum_r S_r / N), the gradient of the global mean loss.

    The learner's function runs on every shard of a batch split over 2, 3 and 4 ranks whose
    shards hold different numbers of answer tokens. Checked: (a) the average of the returned
    values equals the global batch's mean cross-entropy; (b) the gradient w.r.t. every shard's
    logits of (sum of the returned values) / W equals that of the global mean loss (what DDP
    computes). The reference is ``labkit.train.lm_loss``.

    Named mistakes: the shard's own mean; SUM / n_tokens without the factor W; W times or
    1 / W times the shard mean; dividing by W; no division; dividing by the shard's count and
    by n_tokens; dividing by all b * T positions; scoring the -100 positions; returning None,
    a float (``.item()``), a non-scalar, or a tensor with no gradient.
    """
    name = "shard_loss"
    if (bad := _not_callable(name, fn)) is not None:
        return bad
    _need_torch()
    from labkit.data import IGNORE_INDEX
    from labkit.train import lm_loss

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    # (world_size, rows per shard, sequence length, vocabulary, n_tokens as given)
    cases = [(2, 2, 6, 5, int), (3, 2, 5, 7, torch.float32), (4, 3, 4, 6, torch.long)]
    for W, b, T, V, n_kind in cases:
        logits, labels = _shard_case(rng, gen, W, b, T, V, IGNORE_INDEX)
        N = sum(int((lb != IGNORE_INDEX).sum()) for lb in labels)
        n_arg = N if n_kind is int else torch.tensor(N, dtype=n_kind)
        as_what = ("a Python int" if n_kind is int
                   else f"a 0-dim {str(n_kind).removeprefix('torch.')} tensor")
        where = f"world_size {W}, n_tokens {N} given as {as_what}"
        stats = _shard_stats(logits, labels, IGNORE_INDEX)
        want = W * stats["S"] / N
        leaves = [lg.clone().requires_grad_(True) for lg in logits]
        global_mean = lm_loss(torch.cat(leaves), torch.cat(labels)).double()
        values = []
        for r, (lg, lb) in enumerate(zip(leaves, labels, strict=True)):
            try:  # a copy of the labels: changing them in place must not change the reference
                y = _call(fn, lg, lb.clone(), n_arg, W)
            except _LearnerError as exc:
                hint = "" if n_kind is int else (
                    " n_tokens arrives as a tensor after an all-reduce: divide by it directly, "
                    "which works for an int and a 0-dim tensor alike")
                return _report(name, False, f"your function raised {exc} on rank {r} ({where})."
                                            f"{hint}")
            if y is None:
                return _report(name, False, _RETURNED_NONE)
            if isinstance(y, numbers.Real):
                return _report(name, False, f"you return a {type(y).__name__}, not a tensor: "
                               ".item() (or float(...)) cuts the graph, so backward() cannot "
                               "reach the model; return the loss tensor itself")
            if not isinstance(y, torch.Tensor):
                return _report(name, False, "return the loss as a 0-dim torch.Tensor; got "
                                            f"{type(y).__name__}")
            if y.dim() != 0:
                return _report(name, False, f"the loss has shape {_shape(y)}; return one number "
                               "(a 0-dim tensor): sum the token losses (reduction='sum'), then "
                               "scale")
            if not y.requires_grad:
                return _report(name, False, "the loss you return has no gradient: it is "
                               "detached from the logits (.detach(), torch.tensor(...) or "
                               "torch.no_grad()); compute it from the logits with torch ops")
            values.append(y)
        got = torch.stack([v.detach().double() for v in values])
        if not torch.isclose(got.mean(), global_mean.detach(), rtol=1e-5, atol=1e-7):
            counts = ", ".join(str(int(c)) for c in stats["n"])
            for why, mistake in _SHARD_MISTAKES:
                alt = mistake(stats, N, W)
                if (torch.allclose(got, alt, rtol=1e-5, atol=1e-7)
                        and not torch.allclose(alt, want, rtol=1e-5, atol=1e-7)):
                    return _report(name, False, f"{why} (seen with {where}, answer tokens per "
                                                f"shard {counts}).")
            return _report(
                name, False,
                f"the ranks' average is {got.mean().item():.6g}, but the global batch's mean "
                f"loss is {global_mean.item():.6g} ({where}, answer tokens per shard {counts}). "
                f"Rank 0: you return {got[0].item():.6g}, expected world_size * S_0 / n_tokens "
                f"= {W} * {stats['S'][0].item():.6g} / {N} = {want[0].item():.6g}, with S_0 the "
                "SUM of the shard's token cross-entropies (reduction='sum', ignore_index=-100)")
        # (b) what DDP computes: the average over ranks of each rank's gradient.
        ddp = torch.stack(values).sum() / W
        try:
            grads = torch.autograd.grad(ddp, leaves, allow_unused=True)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return _report(name, False, f"backward() through your loss failed: {first}")
        if any(g is None for g in grads):
            return _report(name, False, "no gradient reaches the logits from your loss: compute "
                           "it from the logits passed in, with torch ops")
        ref = torch.autograd.grad(global_mean, leaves)
        for r, (g, gr) in enumerate(zip(grads, ref, strict=True)):
            if not torch.allclose(g.double(), gr.double(), rtol=1e-5,
                                  atol=1e-6 * gr.abs().max().item()):
                err = (g.double() - gr.double()).abs().max().item()
                return _report(
                    name, False,
                    f"the values average to the global mean loss, but the gradient DDP "
                    f"computes (sum of the ranks' gradients / world_size) differs from the "
                    f"global mean loss's on rank {r}'s logits by up to {err:.3g} ({where}); "
                    f"every part of the loss must be built from the logits: {_SHARD_FIX}")
    return _report(
        name, True,
        f"averaged over ranks it is the global mean loss and DDP's averaged gradient is the "
        f"global mean loss's, on {len(cases)} batches split over 2, 3 and 4 ranks with unequal "
        "token counts")
