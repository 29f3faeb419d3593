"""The code a lesson builds by hand agrees with labkit's, outside the notebook.

Lesson 02 writes ``HandLoRALinear`` in a dozen lines. This test takes that class from the
notebook itself (the code cell that defines it), so a change to the lesson's code is tested,
and runs it against ``labkit.lora.LoRALinear`` on layers of several shapes.
"""

import copy
import math

import nbformat
import pytest
import torch
from torch import nn

from labkit import lora
from tests.conftest import LESSONS

LESSON_02 = LESSONS / "02_lora_layers.ipynb"


def _cell_defining(path, name: str) -> str:
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and f"class {name}(" in c.source]
    assert len(cells) == 1, f"expected one code cell defining {name} in {path.name}"
    return cells[0]


@pytest.fixture(scope="module")
def HandLoRALinear():
    namespace = {"torch": torch, "nn": nn}
    exec(_cell_defining(LESSON_02, "HandLoRALinear"), namespace)
    return namespace["HandLoRALinear"]


def _pair(HandLoRALinear, d, k, r, alpha, bias, seed):
    torch.manual_seed(seed)
    base = nn.Linear(k, d, bias=bias)
    ours = HandLoRALinear(copy.deepcopy(base), r=r, alpha=alpha)
    theirs = lora.LoRALinear(copy.deepcopy(base), r=r, alpha=alpha)
    with torch.no_grad():
        ours.A.copy_(theirs.A)
        theirs.B.copy_(torch.randn_like(theirs.B))  # a trained, non-zero update
        ours.B.copy_(theirs.B)
    return ours, theirs


@pytest.mark.parametrize("d, k, r, alpha, bias", [(64, 128, 4, 8, False), (48, 20, 3, 5.0, True),
                                                  (16, 16, 16, 1, False)])
def test_hand_lora_linear_equals_labkit(HandLoRALinear, d, k, r, alpha, bias):
    ours, theirs = _pair(HandLoRALinear, d, k, r, alpha, bias, seed=d + k)
    x = torch.randn(2, 5, k)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=0, atol=1e-6)
    # Independent of both: the formula with the merged weight.
    W = theirs.base_layer.weight + (alpha / r) * theirs.B @ theirs.A
    want = x @ W.T + (theirs.base_layer.bias if bias else 0)
    torch.testing.assert_close(y_ours, want, rtol=1e-5, atol=1e-5)
    # Same gradients for A and B, and the same frozen / trainable split.
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    torch.testing.assert_close(ours.A.grad, theirs.A.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.B.grad, theirs.B.grad, rtol=1e-5, atol=1e-6)
    count = {m: sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, theirs)}
    assert count[ours] == count[theirs] == r * (d + k)


def test_hand_lora_linear_starts_as_its_base_with_labkits_init(HandLoRALinear):
    torch.manual_seed(0)
    base = nn.Linear(32, 24, bias=False)
    layer = HandLoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randn(3, 32)
    assert torch.equal(layer(x), base(x))  # B = 0: no change before training
    assert layer.base.weight.requires_grad is False  # W frozen
    # A is drawn like nn.Linear's weight (Kaiming uniform, a = sqrt(5)): bound 1 / sqrt(k).
    assert layer.A.abs().max() <= 1 / math.sqrt(32) and layer.A.abs().max() > 0.5 / math.sqrt(32)
    assert layer.scaling == 2.0
