"""Lesson 11's hand-written variants agree with labkit's, outside the notebook.

The lesson writes DoRA's weight (``dora_weight``) and LoftQ's loop (``loftq_by_hand``) in a
few lines and compares each with labkit on one layer of the course model. Here the same
functions, taken from the notebook's code cells, run on other shapes, ranks and scales, and
DoRA's gradients are checked too: the lesson says its hand-written norm is detached as in
labkit and PEFT, which only a backward pass shows.
"""

import ast

import nbformat
import pytest
import torch
from torch import nn

from labkit import lora, qlora
from tests.conftest import LESSONS

LESSON_11 = LESSONS / "11_beyond_lora.ipynb"


def _function_from_notebook(name: str, namespace: dict):
    """Define the function ``name`` from the one lesson cell that defines it (only that
    function: the rest of the cell needs the lesson's state)."""
    nb = nbformat.read(LESSON_11, as_version=4)
    found = [node for c in nb.cells if c.cell_type == "code"
             for node in ast.parse(c.source).body
             if isinstance(node, ast.FunctionDef) and node.name == name]
    assert len(found) == 1, f"expected one definition of {name} in {LESSON_11.name}"
    exec(compile(ast.Module(body=found, type_ignores=[]), LESSON_11.name, "exec"), namespace)
    return namespace[name]


@pytest.fixture(scope="module")
def dora_weight():
    return _function_from_notebook("dora_weight", {"torch": torch})


@pytest.mark.parametrize("d, k, r, alpha, bias", [(64, 96, 4, 8, False), (40, 24, 3, 5.0, True),
                                                  (16, 16, 16, 16, False)])
def test_dora_weight_equals_labkit_with_the_same_gradients(dora_weight, d, k, r, alpha, bias):
    torch.manual_seed(d + k)
    model = nn.Sequential(nn.Linear(k, d, bias=bias))
    lora.add_lora(model, ["0"], r=r, alpha=alpha, use_dora=True)
    layer = model[0]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m = layer.lora_magnitude_vector["default"]
    with torch.no_grad():  # as if trained
        B.normal_(0, 0.1)
        m.mul_(1 + 0.1 * torch.randn_like(m))
    W = layer.base_layer.weight.detach()
    x = torch.randn(3, 5, k)
    s = layer.scaling["default"]

    A_h, B_h, m_h = (t.detach().clone().requires_grad_() for t in (A, B, m))
    y_hand = x @ dora_weight(W, A_h, B_h, s, m_h).T + (layer.base_layer.bias if bias else 0)
    y = layer(x)
    torch.testing.assert_close(y_hand, y, rtol=0, atol=1e-5)

    y.square().sum().backward()
    y_hand.square().sum().backward()
    for ours, theirs in ((A_h, A), (B_h, B), (m_h, m)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)


def test_dora_weight_norm_is_detached(dora_weight):
    """With the norm detached, dL/dm is the unit-row output: (W' x / m) summed."""
    torch.manual_seed(0)
    W, A, B = torch.randn(8, 6), torch.randn(2, 6), torch.randn(8, 2)
    m = W.norm(dim=1).requires_grad_()
    A.requires_grad_()
    x = torch.randn(4, 6)
    (x @ dora_weight(W, A, B, 1.5, m).T).sum().backward()
    V = W + 1.5 * B @ A.detach()
    torch.testing.assert_close(m.grad, (x @ (V / V.norm(dim=1, keepdim=True)).T).sum(0))
    # the norm's own gradient would add a term to A's; detached, A's gradient is that of
    # m * V / const
    A2 = A.detach().clone().requires_grad_()
    const = V.norm(dim=1, keepdim=True)
    (x @ (m.detach()[:, None] * (W + 1.5 * B @ A2) / const).T).sum().backward()
    torch.testing.assert_close(A.grad, A2.grad)


@pytest.mark.parametrize("shape, r, s, T", [((48, 128), 4, 1.0, 1), ((128, 64), 6, 2.0, 3)])
def test_loftq_by_hand_equals_labkit(shape, r, s, T):
    nf4 = qlora.nf4_roundtrip(double_quant=False)
    loftq_by_hand = _function_from_notebook("loftq_by_hand", {"torch": torch, "nf4": nf4})
    torch.manual_seed(shape[0])
    W = torch.randn(shape) * 0.05
    Q_h, A_h, B_h = loftq_by_hand(W, r, s, T)
    _, Q, A, B = qlora.loftq_factors(W, r, s, num_iter=T, quantize=nf4)
    assert torch.equal(Q_h, Q)
    torch.testing.assert_close(s * B_h @ A_h, s * B @ A, rtol=0, atol=1e-6)
    plain = qlora.init_error(W, nf4(W))
    assert qlora.init_error(W, Q_h, s * B_h @ A_h) < plain


def test_dora_weight_is_pure(dora_weight):
    """The helper must not change its inputs (the lesson reuses W, A, B after calling it)."""
    W, A, B, m = torch.randn(5, 4), torch.randn(2, 4), torch.randn(5, 2), torch.rand(5)
    before = [t.clone() for t in (W, A, B, m)]
    dora_weight(W, A, B, 2.0, m)
    assert all(torch.equal(a, b) for a, b in zip(before, (W, A, B, m), strict=True))
