"""Lesson 09's exercise: one data-parallel rank's loss, ``world_size * S_r / n_tokens``.

The learner writes ``f(logits, labels, n_tokens, world_size) -> loss`` for one DDP rank's
shard (``S_r``: the shard's SUM of token losses; ``n_tokens``: the answer tokens of the
whole global batch). :func:`check_shard_loss` splits batches over 2, 3 and 4 ranks whose
shards hold different numbers of answer tokens and checks both the values (their average is
the global mean loss) and the gradient DDP computes; it names the classic mistake (the
shard's own mean, a missing or inverted world_size, scoring the -100 positions, ...).

Imports: ``labkit.checks.harness`` (the shared harness); torch on first use, and
``labkit.data`` / ``labkit.train`` (for ``IGNORE_INDEX`` and the reference ``lm_loss``)
inside the check, since both import torch.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...

# torch is imported on first use (``H._need_torch(globals())``), by the checks on tensors only:
# importing labkit.checks then stays torch-free.
torch = None


def _shard_stats(logits, labels, ignore_index: int) -> dict:
    """Per-shard numbers the reference and the mistakes are built from (float64, no graph)."""
    from labkit.train import lm_loss  # imports torch: deferred to keep labkit.checks light

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


def check_shard_loss(fn: Callable, seed: int = 0) -> H.CheckResult:
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
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    # labkit.data and labkit.train import torch: deferred to keep labkit.checks light
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
                y = H._call(fn, lg, lb.clone(), n_arg, W)
            except H._LearnerError as exc:
                hint = "" if n_kind is int else (
                    " n_tokens arrives as a tensor after an all-reduce: divide by it directly, "
                    "which works for an int and a 0-dim tensor alike")
                return H._report(name, False, f"your function raised {exc} on rank {r} ({where})."
                                            f"{hint}")
            if y is None:
                return H._report(name, False, H._RETURNED_NONE)
            if isinstance(y, numbers.Real):
                return H._report(name, False, f"you return a {type(y).__name__}, not a tensor: "
                               ".item() (or float(...)) cuts the graph, so backward() cannot "
                               "reach the model; return the loss tensor itself")
            if not isinstance(y, torch.Tensor):
                return H._report(name, False, "return the loss as a 0-dim torch.Tensor; got "
                                            f"{type(y).__name__}")
            if y.dim() != 0:
                return H._report(name, False,
                                 f"the loss has shape {H._shape(y)}; return one number (a 0-dim "
                                 "tensor): sum the token losses (reduction='sum'), then scale")
            if not y.requires_grad:
                return H._report(name, False, "the loss you return has no gradient: it is "
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
                    return H._report(name, False, f"{why} (seen with {where}, answer tokens per "
                                                f"shard {counts}).")
            return H._report(
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
            return H._report(name, False, f"backward() through your loss failed: {first}")
        if any(g is None for g in grads):
            return H._report(name, False, "no gradient reaches the logits from your loss: compute "
                           "it from the logits passed in, with torch ops")
        ref = torch.autograd.grad(global_mean, leaves)
        for r, (g, gr) in enumerate(zip(grads, ref, strict=True)):
            if not torch.allclose(g.double(), gr.double(), rtol=1e-5,
                                  atol=1e-6 * gr.abs().max().item()):
                err = (g.double() - gr.double()).abs().max().item()
                return H._report(
                    name, False,
                    f"the values average to the global mean loss, but the gradient DDP "
                    f"computes (sum of the ranks' gradients / world_size) differs from the "
                    f"global mean loss's on rank {r}'s logits by up to {err:.3g} ({where}); "
                    f"every part of the loss must be built from the logits: {_SHARD_FIX}")
    return H._report(
        name, True,
        f"averaged over ranks it is the global mean loss and DDP's averaged gradient is the "
        f"global mean loss's, on {len(cases)} batches split over 2, 3 and 4 ranks with unequal "
        "token counts")
