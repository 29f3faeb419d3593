"""Lesson 09's check, check_shard_loss (labkit.checks.lesson09_scaling_out): right answers
pass, each classic mistake is named, and the property it checks holds independently."""

from __future__ import annotations

import math
import re

from labkit._deps import torch

import pytest

from labkit import checks


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
