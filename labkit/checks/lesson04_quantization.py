"""Lesson 04's exercises: absmax quantization of one block, then of a tensor in blocks.

The learner writes ``f(block, code) -> (codes, absmax)`` (:func:`check_absmax_block`) and,
as an extra exercise, ``f(x, code, blocksize) -> (codes, absmax)`` over every block of a 1-D
tensor (:func:`check_absmax_quantize`): ``absmax = max |block|`` and each code is the index
of the level nearest ``x / absmax`` in a 16-level codebook. Both share one body
(:func:`_check_absmax`), which names the classic mistake (max(x) for max |x|, no scaling,
floor or ceiling rounding, off-by-one blocks, a missing partial block...).

Imports: ``labkit.checks.harness`` (the shared harness); torch on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...

# torch is imported on first use (``H._need_torch(globals())``), by the checks on tensors only:
# importing labkit.checks then stays torch-free.
torch = None


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
        raise H._LearnerError(f"{what} must be a tensor of code indices, got "
                              f"{type(codes).__name__}")
    if codes.is_floating_point():
        if not torch.equal(codes, codes.round()):
            raise H._LearnerError(
                f"{what} holds fractions (e.g. {codes.flatten()[0].item():.3g}): return the "
                "*index* of the nearest level (0-15), not the scaled value or the level itself"
            )
    if codes.numel() != n:
        raise H._LearnerError(
            f"{what} has {codes.numel()} entries for {n} values: one code index per value"
        )
    return codes.reshape(-1).long()


def _check_absmax(name, fn, cases, call) -> H.CheckResult:
    """Shared body of the two absmax checks; ``call(fn, x, code, bs)`` runs the learner's."""
    for x, code, bs in cases:
        n = x.numel()
        n_blocks = -(-n // bs)
        try:
            out = call(fn, x, code, bs)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} (x has {n} values, "
                                        f"blocksize {bs})")
        if not (isinstance(out, tuple) and len(out) == 2):
            return H._report(name, False, "return a pair (codes, absmax), e.g. `return idx, "
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
            return H._report(name, False, why)
        if not torch.allclose(absmax, want_absmax, rtol=1e-6, atol=0):
            for why, alt in _absmax_mistakes(x.double(), bs):
                if alt.numel() == absmax.numel() and torch.allclose(absmax, alt, rtol=1e-6):
                    return H._report(name, False, why)
            return H._report(
                name, False, f"absmax differs from max |x| per block (block 0: you have "
                f"{absmax[0].item():.4g}, expected {want_absmax[0].item():.4g})"
            )
        try:
            codes = _as_index_tensor(codes, n, "codes")
        except H._LearnerError as exc:
            return H._report(name, False, str(exc))
        per_value = want_absmax.repeat_interleave(bs)[:n]
        want = _nearest(x.double() / per_value, code)
        if torch.equal(codes, want):
            continue
        for why, alt in _code_mistakes(x, code, per_value, want_absmax.max()):
            if torch.equal(codes, alt.long()):
                return H._report(name, False, why)
        bad = (codes != want).nonzero()[0].item()
        return H._report(
            name, False, f"{int((codes != want).sum())} of {n} code indices differ, the first "
            f"at position {bad}: x = {x[bad].item():.4g}, absmax {per_value[bad].item():.4g}, "
            f"scaled {x[bad].item() / per_value[bad].item():.4g}; the nearest level is index "
            f"{want[bad].item()} ({code[want[bad]].item():.4g}), you chose {codes[bad].item()}"
        )
    return H._report(name, True, f"codes and absmax match the reference on {len(cases)} inputs")


def _codebooks():
    """Two 16-level codebooks: evenly spaced (Int4-like) and normal-quantile (NF4-like)."""
    even = torch.linspace(-1.0, 1.0, 16)
    p = torch.linspace(0.03, 0.97, 16, dtype=torch.float64)
    normal = torch.special.ndtri(p)
    return [even, (normal / normal.abs().max()).float()]


def check_absmax_block(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(block, code) -> (codes, absmax)``: absmax quantization of ONE block.

    ``absmax = max |block|``; ``codes[i] = argmin_j |block[i] / absmax - code[j]|`` (an index
    0..15 into the 16-level ``code``). ``absmax`` may be a float or a 0-d / 1-element tensor.

    Named mistakes: max(x) instead of max |x|; no division by the absmax; floor or ceiling
    instead of nearest; multiplying by the absmax; returning levels instead of indices.
    """
    name = "absmax_block"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i, code in enumerate(_codebooks() * 2):
        x = torch.randn(64, generator=gen) * (0.02 if i % 2 else 3.0)
        if i == 1:
            x[torch.argmax(x.abs())] = -x.abs().max()  # the largest magnitude is negative
        cases.append((x, code, 64))
    return _check_absmax(name, fn, cases, lambda f, x, code, bs: H._call(f, x, code))


def check_absmax_quantize(fn: Callable, seed: int = 0) -> H.CheckResult:
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
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
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
    return _check_absmax(name, fn, cases, lambda f, x, code, bs: H._call(f, x, code, bs))
