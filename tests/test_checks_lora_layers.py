"""Lesson 02's check, check_lora_forward (labkit.checks.lesson02_lora_layers): a right answer
passes, each classic mistake gets its own specific message."""

from __future__ import annotations

from labkit._deps import torch

import pytest

from labkit import checks


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
