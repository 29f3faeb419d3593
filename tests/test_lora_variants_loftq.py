"""LoftQ (labkit.qlora.loftq, prepare_qlora(init="loftq")) against PEFT's algorithm on the
course model, on the CPU.

PEFT's own LoftQ path (``LoraConfig(init_lora_weights="loftq")``) needs CUDA (and scipy), so
here PEFT's function ``peft.utils.loftq_utils.loftq_init`` is run with its one device name
changed from "cuda" to "cpu" (its source, executed in its own module's namespace; nothing
else is changed): bitsandbytes' CPU NF4 quantizer, blocks of 64, no double quantization,
and a full SVD. Nothing is random there (no random projections, a deterministic quantizer),
so the comparison needs no seed beyond the shipped weights. PEFT's ``B A`` ignores the LoRA
scaling (peft #1982), so the comparison runs at ``alpha = r`` (s = 1), where the two
conventions give the same numbers; labkit divides by ``s`` otherwise (tested below).

Tolerances: Q is compared exactly (the same codes and scales: labkit's NF4 is bitsandbytes'
CPU quantizer bit for bit); A, B and Q + s B A within 1e-5 (the same LAPACK SVD of the same
residual); training as in tests/lora_variants_common.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from lora_variants_common import (
    FILTERS,
    INIT_TOL,
    PEFT_PREFIX,
    TARGETS,
    TOL,
    course_model,
    deepcopy,
    logits,
    run,
)
from peft import LoraConfig, PeftModel, get_peft_model

from labkit import lora as L
from labkit.qlora import dequantize_weight, prepare_qlora
from labkit.qlora.loftq import init_error, loftq_factors, nf4_roundtrip

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]
R = 4
LAYER = "layers.0.mlp.down_proj"  # a real layer of the course model, (128, 256)


def _peft_loftq_on_cpu():
    """PEFT's loftq_init with its one device name set to "cpu": the stand-in that
    benchmarks/gpu_loftq.py also runs in its dry run (one copy, there)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_loftq", Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_loftq.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.peft_loftq(torch.device("cpu"))


peft_loftq = _peft_loftq_on_cpu()


@pytest.fixture(scope="module")
def base():
    return course_model()


@pytest.mark.parametrize("num_iter", [1, 3])
def test_same_q_a_b_as_peft_on_a_real_layer(base, num_iter):
    w = base.get_submodule(LAYER).weight.detach()
    q_peft, a_peft, b_peft = peft_loftq(w, num_bits=4, reduced_rank=R, num_iter=num_iter)
    source, q, A, B = loftq_factors(w, R, scaling=1.0, num_iter=num_iter)
    torch.testing.assert_close(q, q_peft, atol=0, rtol=0)
    torch.testing.assert_close(A, a_peft, **INIT_TOL)
    torch.testing.assert_close(B, b_peft, **INIT_TOL)
    torch.testing.assert_close(nf4_roundtrip()(source), q, atol=0, rtol=0)
    # labkit's convention with s = 2: s B A is the same correction (PEFT's B A would be 2x)
    _, q2, A2, B2 = loftq_factors(w, R, scaling=2.0, num_iter=num_iter)
    torch.testing.assert_close(q2, q, **INIT_TOL)  # (rounding of s B A moves a scale by 1 ulp)
    torch.testing.assert_close(2.0 * B2 @ A2, B @ A, **INIT_TOL)


def test_error_below_plain_quantization(base):
    """Computed on a real layer: ||W - (Q + sBA)|| against QLoRA's ||W - quant(W)||."""
    w = base.get_submodule(LAYER).weight.detach()
    plain = init_error(w, nf4_roundtrip()(w))
    errors = []
    for t in (1, 2, 5):
        _, q, A, B = loftq_factors(w, 8, 1.0, t)
        errors.append(init_error(w, q, B @ A))
    assert errors[0] < 0.95 * plain
    assert errors[2] <= errors[0]  # more alternating steps do not make it worse here


@pytest.fixture(scope="module")
def loftq_pair(base):
    """labkit's QLoRA model with LoftQ, and PEFT's LoftQ model rebuilt on the CPU as PEFT
    leaves it: a float base holding Q, adapters from PEFT's loftq_init."""
    mine = deepcopy(base)
    rep = prepare_qlora(mine, TARGETS, r=R, alpha=R, init="loftq", loftq_iter=2,
                        double_quant=False)
    theirs_base = deepcopy(base)
    factors = {}
    for name, mod in base.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            q, a, b = peft_loftq(mod.weight.detach(), num_bits=4, reduced_rank=R, num_iter=2)
            theirs_base.get_submodule(name).weight.data.copy_(q)
            factors[name] = (a, b)
    pm = get_peft_model(deepcopy(theirs_base), LoraConfig(r=R, lora_alpha=R,
                                                          target_modules=TARGETS))
    with torch.no_grad():
        for name, (a, b) in factors.items():
            pm.get_submodule(PEFT_PREFIX + name).lora_A["default"].weight.copy_(a)
            pm.get_submodule(PEFT_PREFIX + name).lora_B["default"].weight.copy_(b)
    return rep, mine, theirs_base, pm, factors


def test_prepare_qlora_stores_peft_s_q_and_trains_like_peft(loftq_pair, base, tmp_path):
    rep, mine, theirs_base, pm, factors = loftq_pair
    assert rep.lora.config.init_lora_weights == "loftq"
    assert rep.lora.config.loftq_config == {"loftq_bits": 4, "loftq_iter": 2}
    for name, (a, b) in factors.items():
        lay = mine.get_submodule(name)
        torch.testing.assert_close(dequantize_weight(lay), theirs_base.get_submodule(name).weight,
                                   atol=0, rtol=0)  # the 4-bit base holds exactly PEFT's Q
        torch.testing.assert_close(lay.lora_A["default"].weight, a, **INIT_TOL)
        torch.testing.assert_close(lay.lora_B["default"].weight, b, **INIT_TOL)
    torch.testing.assert_close(logits(mine), logits(pm), **INIT_TOL)
    h1, h2 = run(mine), run(pm)
    assert h1.loss == pytest.approx(h2.loss, rel=1e-5)
    torch.testing.assert_close(logits(mine), logits(pm), **TOL)

    # files: an ordinary adapter on the LoftQ base (as PEFT's LoftQ example saves it)
    L.save_adapter(mine, tmp_path / "ours")
    assert L.read_adapter_config(tmp_path / "ours").init_lora_weights is True
    loaded = PeftModel.from_pretrained(deepcopy(theirs_base), tmp_path / "ours")
    torch.testing.assert_close(logits(loaded), logits(mine), **INIT_TOL)
    pm.save_pretrained(tmp_path / "peft")
    again = deepcopy(base)
    prepare_qlora(again, TARGETS, r=R, alpha=R, init="loftq", loftq_iter=2, double_quant=False)
    L.load_adapter(again, tmp_path / "peft")
    torch.testing.assert_close(logits(again), logits(pm), **INIT_TOL)


def test_loftq_errors(base):
    with pytest.raises(ValueError, match="quantizes the base weight.*prepare_qlora"):
        L.add_lora(deepcopy(base), ["q_proj"], r=4, alpha=8, init="loftq")
    with pytest.raises(ValueError, match="loftq_iter must be an int >= 1"):
        prepare_qlora(deepcopy(base), ["q_proj"], init="loftq", loftq_iter=0)
    w = base.get_submodule(LAYER).weight.detach()
    with pytest.raises(ValueError, match="rank r=200 must be in 1..128"):
        loftq_factors(w, 200)
