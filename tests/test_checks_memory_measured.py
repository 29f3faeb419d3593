"""Lesson 06's predict-then-measure check: a prediction against a measured LoRA step."""

import pytest

from labkit import checks, lora

SHAPES = {"q_proj": ("hidden_size", "hidden_size"), "k_proj": ("kv_dim", "hidden_size"),
          "v_proj": ("kv_dim", "hidden_size"), "o_proj": ("hidden_size", "hidden_size"),
          "gate_proj": ("intermediate_size", "hidden_size"),
          "up_proj": ("intermediate_size", "hidden_size"),
          "down_proj": ("hidden_size", "intermediate_size")}


def right(cfg, r, targets):
    """An independent count: 4 bytes per trainable number, r (d + k) per adapter, per block."""
    dims = [(getattr(cfg, SHAPES[t][0]), getattr(cfg, SHAPES[t][1])) for t in targets]
    return 4 * cfg.n_layers * sum(lora.adapter_params(d, k, r) for d, k in dims)


def test_the_right_prediction_passes():
    res = checks.check_gradient_bytes(right)
    assert res.passed and "equal to memory.measure on 2 LoRA steps" in res.message


@pytest.mark.parametrize("wrong, reason", [
    (lambda c, r, t: right(c, r, t) // c.n_layers, "multiply by n_layers"),
    (lambda c, r, t: right(c, r, t) // 2, "2 bytes per number"),
    (lambda c, r, t: 3 * right(c, r, t), "AdamW's two moments"),
    (lambda c, r, t: 8 * right(c, r, t), "counts bits"),
    (lambda c, r, t: right(c, r, t) + 4, "r * (d + k) float32 numbers"),
], ids=["one-block", "bf16", "moments", "bits", "other"])
def test_each_classic_mistake_is_named_with_the_measured_bytes(wrong, reason):
    res = checks.check_gradient_bytes(wrong)
    assert not res.passed and reason in res.message
    assert "memory.measure counted 28,672" in res.message  # the course model, r=8 on q, v


def test_a_stub_and_a_non_number_fail_clearly():
    def stub(cfg, r, targets):
        raise NotImplementedError("Exercise gradient-bytes: replace this line")
    with pytest.raises(NotImplementedError, match="gradient-bytes"):  # the stub speaks
        checks.check_gradient_bytes(stub)
    assert "return a number of bytes" in checks.check_gradient_bytes(lambda c, r, t: "x").message
