"""Exercise checks: a right answer passes; each classic mistake gets its own specific message.

Every wrong answer below is a function a learner could plausibly write; the test asserts the
check names that mistake (not just "incorrect"), prints exactly one protocol line, and never
raises. An unsolved stub (NotImplementedError) passes through so the cell fails there.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

from labkit._deps import torch

import pytest

from labkit import checks
from labkit.quant import nf4_codebook

# ----------------------------------------------------------------------------- protocol


def test_protocol_line_round_trips(capsys):
    res = checks.check_lora_param_count(lambda d, k, r: r * (d + k))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out == res.line + "\n"
    assert checks.parse_check_lines("noise\n" + out + "more noise") == [res]
    assert res.passed and bool(res)
    fail = checks.CheckResult("x", False, "what is wrong")
    assert checks.parse_check_lines(fail.line) == [fail]
    assert fail.line == "CHECK x: FAIL - what is wrong"


def test_arithmetic_checks_run_without_importing_torch():
    """A count or a byte total is checked at once: no torch import (seconds on a laptop)."""
    code = (
        "import sys; from labkit import checks\n"
        "checks.check_lora_param_count(lambda d, k, r: r * (d + k))\n"
        "checks.check_memory_term(lambda n: 8 * n)\n"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False"


def test_passing_a_value_instead_of_the_function(capsys):
    res = checks.check_lora_param_count(16384)
    assert not res.passed and "pass your function itself" in res.message


def test_not_implemented_stub_propagates():
    def stub(d, k, r):
        raise NotImplementedError("Exercise: see the hint above")

    with pytest.raises(NotImplementedError, match="see the hint"):
        checks.check_lora_param_count(stub)


# ----------------------------------------------------------------------------- LoRA forward


def good_forward(x, W, A, B, alpha, r):
    return x @ W.T + (alpha / r) * (x @ A.T) @ B.T


def test_lora_forward_accepts_a_right_answer_and_an_nn_functional_one(capsys):
    assert checks.check_lora_forward(good_forward).passed

    def via_linear(x, W, A, B, alpha, r):
        F = torch.nn.functional
        return F.linear(x, W) + F.linear(F.linear(x, A), B) * alpha / r

    assert checks.check_lora_forward(via_linear).passed


def test_lora_forward_agrees_with_labkit_lora_linear():
    """The check's reference is the same maths as labkit's LoRALinear (independent code)."""
    from labkit.lora import LoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10, bias=False).double()
    layer = LoRALinear(base, r=3, alpha=12.0)
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(4, 12, dtype=torch.float64)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        assert torch.allclose(layer(x), good_forward(x, base.weight, A, B, 12.0, 3))


LORA_MISTAKES = {
    "no scale": (lambda x, W, A, B, a, r: x @ W.T + (x @ A.T) @ B.T, "scale alpha / r is missing"),
    "r/alpha": (lambda x, W, A, B, a, r: x @ W.T + (r / a) * (x @ A.T) @ B.T, "upside down"),
    "alpha only": (lambda x, W, A, B, a, r: x @ W.T + a * (x @ A.T) @ B.T, "alpha instead of"),
    "no frozen path": (
        lambda x, W, A, B, a, r: (a / r) * (x @ A.T) @ B.T,
        "frozen path is missing",
    ),
    "scale both": (
        lambda x, W, A, B, a, r: (a / r) * (x @ W.T + (x @ A.T) @ B.T),
        "scales the frozen path too",
    ),
    "W untransposed": (
        lambda x, W, A, B, a, r: x @ W + (a / r) * (x @ A.T) @ B.T,
        "frozen weight is used untransposed",
    ),
    "A, B swapped": (
        lambda x, W, A, B, a, r: x @ W.T + (a / r) * (x @ B @ A),
        "A and B are applied untransposed",
    ),
    "transposed A": (
        lambda x, W, A, B, a, r: x @ W.T + (a / r) * (x @ A) @ B.T,
        "raised RuntimeError",
    ),
    "no return": (lambda x, W, A, B, a, r: None, "forget `return`"),
    "wrong shape": (lambda x, W, A, B, a, r: x @ A.T, "expected (5, 6)"),
}


@pytest.mark.parametrize("mistake", LORA_MISTAKES, ids=list(LORA_MISTAKES))
def test_lora_forward_names_each_mistake(mistake, capsys):
    fn, expected = LORA_MISTAKES[mistake]
    res = checks.check_lora_forward(fn)
    assert not res.passed
    assert expected in res.message, res.message
    assert capsys.readouterr().out.startswith("CHECK lora_forward: FAIL - ")


def test_lora_forward_shape_error_gets_the_shape_hint():
    res = checks.check_lora_forward(lambda x, W, A, B, a, r: x @ W.T + (x @ A) @ B)
    assert "A is r x k, B is d x r" in res.message


def test_lora_forward_in_place_change_of_W():
    def inplace(x, W, A, B, a, r):
        W += (a / r) * B @ A
        return x @ W.T

    res = checks.check_lora_forward(inplace)
    assert not res.passed and "changed W in place" in res.message


def test_lora_forward_batch_only_failure():
    def flat_only(x, W, A, B, a, r):
        x = x.reshape(-1, x.shape[-1])  # (b, t, k) -> (b * t, k): the batch shape is lost
        return x @ W.T + (a / r) * (x @ A.T) @ B.T

    res = checks.check_lora_forward(flat_only)
    assert not res.passed and "batch of sequences" in res.message


def test_lora_forward_unknown_mistake_reports_the_size_of_the_error():
    res = checks.check_lora_forward(lambda x, W, A, B, a, r: good_forward(x, W, A, B, a, r) + 0.5)
    assert not res.passed
    assert "differs from x W^T + (alpha / r) x A^T B^T by up to 0.5" in res.message


# ----------------------------------------------------------------------------- param count


COUNT_MISTAKES = {
    "d*k": (lambda d, k, r: d * k, "frozen weight W"),
    "r*d*k": (lambda d, k, r: r * d * k, "the two factors are added"),
    "B only": (lambda d, k, r: r * d, "only B"),
    "A only": (lambda d, k, r: r * k, "only A"),
    "plus frozen": (lambda d, k, r: d * k + r * (d + k), "adds the frozen weight"),
    "square": (lambda d, k, r: 2 * r * d, "square layer"),
    "float": (lambda d, k, r: r * (d + k) / 1, "return an int"),
    "None": (lambda d, k, r: None, "forget `return`"),
    "raises": (lambda d, k, r: d / 0, "raised ZeroDivisionError"),
    "other": (lambda d, k, r: r * (d + k) + 1, "A is r x k and B is d x r"),
}


def test_param_count_passes():
    assert checks.check_lora_param_count(lambda d, k, r: r * d + k * r).passed


@pytest.mark.parametrize("mistake", COUNT_MISTAKES, ids=list(COUNT_MISTAKES))
def test_param_count_names_each_mistake(mistake):
    fn, expected = COUNT_MISTAKES[mistake]
    res = checks.check_lora_param_count(fn)
    assert not res.passed and expected in res.message, res.message


# ----------------------------------------------------------------------------- absmax


def good_block(block, code):
    absmax = block.abs().max()
    return (block.unsqueeze(1) / absmax - code).abs().argmin(dim=1), absmax


def good_quantize(x, code, bs):
    codes, scales = [], []
    for i in range(0, len(x), bs):
        c, s = good_block(x[i : i + bs], code)
        codes.append(c)
        scales.append(s)
    return torch.cat(codes), torch.stack(scales)


def test_absmax_checks_pass_and_agree_with_labkit_quant():
    assert checks.check_absmax_block(good_block).passed
    assert checks.check_absmax_quantize(good_quantize).passed
    # The same recipe gives labkit.quant's NF4 indices (its reference path, independent code).
    from labkit.quant import nearest_code_index

    x = torch.randn(64)
    idx, absmax = good_block(x, nf4_codebook())
    assert torch.equal(idx.to(torch.uint8), nearest_code_index(x / absmax, nf4_codebook()))


def test_absmax_block_accepts_numpy_codes_and_a_float_absmax():
    def numpy_block(block, code):
        idx, absmax = good_block(block, code)
        return idx.numpy().astype("uint8"), float(absmax)

    assert checks.check_absmax_block(numpy_block).passed


def _floor_block(block, code):
    absmax = block.abs().max()
    scaled = block / absmax
    idx = torch.searchsorted(code, scaled, right=True) - 1
    return idx.clamp(0, 15), absmax


BLOCK_MISTAKES = {
    "no division": (lambda b, c: ((b.unsqueeze(1) - c).abs().argmin(1), b.abs().max()),
                    "not divided by their block's absmax"),
    "floor": (_floor_block, "rounding goes down"),
    "max not abs": (lambda b, c: good_block(b / b.abs().max() * b.max(), c)[0:1] + (b.max(),),
                    "max(x), not max(|x|)"),
    "levels not indices": (lambda b, c: (c[good_block(b, c)[0]], b.abs().max()),
                           "return the *index*"),
    "single value": (lambda b, c: good_block(b, c)[0], "return a pair"),
}


@pytest.mark.parametrize("mistake", BLOCK_MISTAKES, ids=list(BLOCK_MISTAKES))
def test_absmax_block_names_each_mistake(mistake):
    fn, expected = BLOCK_MISTAKES[mistake]
    res = checks.check_absmax_block(fn)
    assert not res.passed and expected in res.message, res.message


def _blocks_with(span):
    def fn(x, code, bs):
        codes, scales = [], []
        for i in range(0, len(x), bs):
            a, b = span(i, bs)
            s = x[a:b].abs().max()
            codes.append((x[i : i + bs].unsqueeze(1) / s - code).abs().argmin(1))
            scales.append(s)
        return torch.cat(codes), torch.stack(scales)

    return fn


QUANT_MISTAKES = {
    "overlap": (_blocks_with(lambda i, bs: (i, i + bs + 1)), "reaches one value into the next"),
    "short": (_blocks_with(lambda i, bs: (i, i + bs - 1)), "misses its last value"),
    "no partial block": (
        lambda x, c, bs: good_quantize(x[: len(x) - len(x) % bs], c, bs) if len(x) % bs
        else good_quantize(x, c, bs),
        "blocks of",
    ),
    "global absmax": (
        lambda x, c, bs: ((x.unsqueeze(1) / x.abs().max() - c).abs().argmin(1),
                          x.abs().max().repeat(-(-len(x) // bs))),
        "whole tensor",
    ),
}


@pytest.mark.parametrize("mistake", QUANT_MISTAKES, ids=list(QUANT_MISTAKES))
def test_absmax_quantize_names_each_mistake(mistake):
    fn, expected = QUANT_MISTAKES[mistake]
    res = checks.check_absmax_quantize(fn)
    assert not res.passed and expected in res.message, res.message


# ----------------------------------------------------------------------------- memory terms


MEMORY_CASES = [
    ("adamw_state", lambda n: 2 * 4 * n, None),
    ("adamw_state", lambda n: 4 * n, "keeps two moments"),
    ("adamw_state", lambda n: 2 * n, "one 16-bit moment"),
    ("adamw_state", lambda n: 2 * 32 * n, "counts bits, not bytes"),
    ("adamw_state", lambda n: 8 * n / 1e9, "gigabytes"),
    ("nf4_weights", lambda n, bs: n / 2 + 4 * n / bs, None),
    ("nf4_weights", lambda n, bs: n / 2, "block scales are missing"),
    ("nf4_weights", lambda n, bs: n * 4 + 4 * n / bs, "4 bits as 4 bytes"),
    ("qlora_weights", lambda nb, na: nb * 4.5 / 8 + 2 * na, None),
    ("qlora_weights", lambda nb, na: (nb + na) * 4.5 / 8, "adapters are compressed too"),
    ("qlora_weights", lambda nb, na: nb * 0.5 + na * 2, "block scales are missing"),
    ("qlora_weights", lambda nb, na: nb * 0.75, "expected"),
]


@pytest.mark.parametrize("term, fn, expected", MEMORY_CASES)
def test_memory_terms(term, fn, expected):
    res = checks.check_memory_term(fn, term)
    assert res.name == f"memory_{term}"
    if expected is None:
        assert res.passed, res.message
    else:
        assert not res.passed and expected in res.message, res.message


def test_memory_term_references_agree_with_labkit_quant():
    from labkit.quant import quantized_nbytes

    for n, bs in checks.MEMORY_TERMS["nf4_weights"].cases:
        ref = checks.MEMORY_TERMS["nf4_weights"].reference(n, bs)
        assert ref == quantized_nbytes(n, bs, double_quant=False, count_codebooks=False)
    nb, na = 6_738_415_616, 39_976_960
    want = quantized_nbytes(nb, 64, double_quant=False, count_codebooks=False) + 2 * na
    assert checks.MEMORY_TERMS["qlora_weights"].reference(nb, na) == want
    assert math.isclose(checks.MEMORY_TERMS["adamw_state"].reference(10) / 10, 8)


def test_unknown_memory_term_is_the_authors_error():
    with pytest.raises(ValueError, match="unknown memory term 'adam'; known: adamw_state"):
        checks.check_memory_term(lambda n: n, "adam")


# ----------------------------------------------------------------------------- shard loss


def _ce_sum(logits, labels, ignore=-100):
    """Summed token cross-entropy, written out (log-softmax picked at the label), not lm_loss."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = labels != ignore
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum()


def good_shard_loss(logits, labels, n_tokens, world_size):
    return world_size * _ce_sum(logits, labels) / n_tokens


def test_shard_loss_passes_with_int_and_tensor_n_tokens(capsys):
    seen = []

    def spy(logits, labels, n_tokens, world_size):
        seen.append(type(n_tokens).__name__ if not torch.is_tensor(n_tokens)
                    else (n_tokens.dim(), n_tokens.dtype))
        return good_shard_loss(logits, labels, n_tokens, world_size)

    res = checks.check_shard_loss(spy)
    assert res.passed, res.message
    assert res.name == "shard_loss" and "global mean loss" in res.message
    assert capsys.readouterr().out == res.line + "\n"
    assert "int" in seen and (0, torch.float32) in seen and (0, torch.long) in seen

    def via_lm_loss(logits, labels, n_tokens, world_size):  # labkit's own recipe
        from labkit.train import lm_loss

        return lm_loss(logits, labels, reduction="sum") * (world_size / n_tokens)

    assert checks.check_shard_loss(via_lm_loss).passed


def test_shard_loss_check_sums_to_the_global_mean_independently():
    """The property the check tests, verified here without it: on unequal shards the
    learner's answer averages to the global mean and gives the global mean's gradient."""
    torch.manual_seed(0)
    W, V = 3, 5
    labels = torch.randint(0, V, (W, 2, 6))
    labels[0, :, :5] = -100  # 2 answer tokens on rank 0, 12 on rank 1, 7 on rank 2
    labels[2, 0, :] = -100
    labels[2, 1, :1] = -100
    logits = torch.randn(W, 2, 6, V, dtype=torch.float64, requires_grad=True)
    N = int((labels != -100).sum())
    per_rank = torch.stack([good_shard_loss(logits[r], labels[r], N, W) for r in range(W)])
    glob = _ce_sum(logits, labels) / N
    assert torch.allclose(per_rank.mean(), glob)
    g_ddp, = torch.autograd.grad(per_rank.sum() / W, logits)
    g_glob, = torch.autograd.grad(glob, logits)
    assert torch.allclose(g_ddp, g_glob)
    shard_means = torch.stack([_ce_sum(logits[r], labels[r]) / (labels[r] != -100).sum()
                               for r in range(W)])
    assert not torch.allclose(shard_means.mean(), glob)  # why the shard mean is a mistake


def _mean(lg, lb):
    return _ce_sum(lg, lb) / (lb != -100).sum()


def _values_right_gradient_of_shard_mean(lg, lb, n, W):
    right = good_shard_loss(lg, lb, n, W)
    wrong = _mean(lg, lb)
    return right.detach() + (wrong - wrong.detach())  # the value of one, the gradient of other


SHARD_MISTAKES = {
    "shard mean": (lambda lg, lb, n, W: _mean(lg, lb),
                   "with unequal token counts the average of shard means weights a short "
                   "shard's tokens more; divide the shard's SUM by the global n_tokens"),
    "no world_size": (lambda lg, lb, n, W: _ce_sum(lg, lb) / n,
                      "DDP divides the summed gradients by world_size: multiply by world_size"),
    "W * shard mean": (lambda lg, lb, n, W: W * _mean(lg, lb), "world_size times the shard's"),
    "shard mean / W": (lambda lg, lb, n, W: _mean(lg, lb) / W,
                       "shard's own mean divided by world_size"),
    "divides by W": (lambda lg, lb, n, W: _ce_sum(lg, lb) / n / W,
                     "world_size divides instead of multiplying"),
    "sum only": (lambda lg, lb, n, W: _ce_sum(lg, lb), "never divided by n_tokens"),
    "W * sum": (lambda lg, lb, n, W: W * _ce_sum(lg, lb), "division by n_tokens is missing"),
    "divided twice": (lambda lg, lb, n, W: W * _mean(lg, lb) / n, "the SUM is divided twice"),
    "mean over b*T": (lambda lg, lb, n, W: _ce_sum(lg, lb) / lb.numel(),
                      "mean over all b * T positions"),
    "W * sum / numel": (lambda lg, lb, n, W: W * _ce_sum(lg, lb) / lb.numel(),
                        "divides by labels.numel()"),
    "-100 as class 0": (
        lambda lg, lb, n, W: W * torch.nn.functional.cross_entropy(
            lg.flatten(0, 1), lb.clamp(min=0).flatten(), reduction="sum") / n,
        "scored as class 0",
    ),
    "no return": (lambda lg, lb, n, W: None, "forget `return`"),
    ".item()": (lambda lg, lb, n, W: good_shard_loss(lg, lb, n, W).item(), ".item() (or float"),
    "a list": (lambda lg, lb, n, W: [good_shard_loss(lg, lb, n, W)], "got list"),
    "reduction none": (
        lambda lg, lb, n, W: W * torch.nn.functional.cross_entropy(
            lg.flatten(0, 1), lb.flatten(), reduction="none") / n,
        "the loss has shape (12)",
    ),
    "detached": (lambda lg, lb, n, W: good_shard_loss(lg, lb, n, W).detach(), "no gradient"),
    "new tensor": (
        lambda lg, lb, n, W: torch.tensor(good_shard_loss(lg, lb, n, W).item(),
                                          requires_grad=True),
        "no gradient reaches the logits",
    ),
    "tensor n_tokens breaks": (  # range() takes an int: the first case passes, the second not
        lambda lg, lb, n, W: W * _ce_sum(lg, lb) / len(range(n)),
        "as a 0-dim float32 tensor). n_tokens arrives as a tensor after an all-reduce",
    ),
    "gradient only wrong": (_values_right_gradient_of_shard_mean,
                            "the values average to the global mean loss, but the gradient"),
    "other": (lambda lg, lb, n, W: 1.1 * good_shard_loss(lg, lb, n, W),
              "expected world_size * S_0 / n_tokens = 2 *"),
}


@pytest.mark.parametrize("mistake", SHARD_MISTAKES, ids=list(SHARD_MISTAKES))
def test_shard_loss_names_each_mistake(mistake, capsys):
    fn, expected = SHARD_MISTAKES[mistake]
    res = checks.check_shard_loss(fn)
    assert not res.passed
    assert expected in res.message, res.message
    out = capsys.readouterr().out
    assert out.startswith("CHECK shard_loss: FAIL - ") and out.count("\n") == 1


def test_shard_loss_generic_message_gives_rank_0s_expected_value():
    res = checks.check_shard_loss(lambda lg, lb, n, W: 1.1 * good_shard_loss(lg, lb, n, W))
    m = re.search(r"Rank 0: you return (\S+), expected .* = 2 \* (\S+) / (\d+) = (\S+), with",
                  res.message)
    assert m, res.message
    got, s0, n, want = float(m[1]), float(m[2]), int(m[3]), float(m[4])
    assert math.isclose(got, 1.1 * want, rel_tol=1e-4)
    assert math.isclose(want, 2 * s0 / n, rel_tol=1e-4)


def test_shard_loss_stub_propagates_and_labels_changed_in_place_do_not_fool_it():
    def stub(logits, labels, n_tokens, world_size):
        raise NotImplementedError("Exercise 9.2: see the hint above")

    with pytest.raises(NotImplementedError, match="see the hint"):
        checks.check_shard_loss(stub)

    def clamps_in_place(lg, lb, n, W):  # scores -100 as class 0 AND rewrites the labels
        lb[lb == -100] = 0
        return good_shard_loss(lg, lb, n, W)

    res = checks.check_shard_loss(clamps_in_place)
    assert not res.passed and "scored as class 0" in res.message, res.message
    res = checks.check_shard_loss(3.0)
    assert not res.passed and "pass your function itself" in res.message
