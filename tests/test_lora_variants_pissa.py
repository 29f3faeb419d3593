"""PiSSA (labkit.lora.init, add_lora(init="pissa")) against PEFT's init_lora_weights="pissa"
on the course model: s B A and the residual at init (not A and B apart: singular vectors'
signs are arbitrary), outputs after training, adapter files both ways, the rank-2r
conversion for the original base (PEFT's path_initial_model_for_weight_conversion), and
QPiSSA (float init, then the residual quantized).

Tolerances: see tests/lora_variants_common.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from lora_variants_common import (
    FILTERS,
    INIT_TOL,
    TARGETS,
    TOL,
    adapter_products,
    course_model,
    deepcopy,
    logits,
    run,
)
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from labkit import lora as L
from labkit.qlora import dequantize_weight, prepare_qlora, quantize_model
from labkit.qlora.loftq import init_error, nf4_roundtrip

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS] + [
    # PEFT's advice when a PiSSA adapter loads (the conversion is tested below)
    pytest.mark.filterwarnings("ignore:PiSSA changes the base weights:UserWarning")]
PEFT_PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def base():
    return course_model()


def pair(base, rslora=False):
    mine = deepcopy(base)
    L.add_lora(mine, TARGETS, r=4, alpha=8, init="pissa", use_rslora=rslora)
    pm = get_peft_model(deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                   init_lora_weights="pissa", use_rslora=rslora))
    return mine, pm


def bases(model, prefix=""):
    return {n.removeprefix(prefix): p.detach() for n, p in model.named_parameters()
            if "base_layer.weight" in n}


@pytest.mark.parametrize("rslora", [False, True])
def test_init_equals_peft_on_ba_and_residual(base, rslora):
    mine, pm = pair(base, rslora)
    ours, theirs = adapter_products(mine), adapter_products(pm, PEFT_PREFIX)
    assert len(ours) == 8
    for name, ba in ours.items():
        torch.testing.assert_close(ba, theirs[name], **INIT_TOL)
        w = base.get_submodule(name).weight
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # s B A: the top-4 part of W
        torch.testing.assert_close(ba, (U[:, :4] * S[:4]) @ Vh[:4], **INIT_TOL)
    res_ours, res_theirs = bases(mine), bases(pm, PEFT_PREFIX)
    for k, v in res_ours.items():
        torch.testing.assert_close(v, res_theirs[k], **INIT_TOL)
    torch.testing.assert_close(logits(mine), logits(base), **INIT_TOL)  # W_res + sBA = W


def test_trains_like_peft_and_files_both_ways(base, tmp_path):
    mine, pm = pair(base)
    L.save_adapter(mine, tmp_path / "initial")  # for the conversion test below
    pm.save_pretrained(tmp_path / "peft-initial")
    h1, h2 = run(mine), run(pm)
    assert h1.loss == pytest.approx(h2.loss, rel=1e-5)
    assert not torch.allclose(logits(mine), logits(base), atol=1e-2)
    torch.testing.assert_close(logits(mine), logits(pm), **TOL)
    ours, theirs = adapter_products(mine), adapter_products(pm, PEFT_PREFIX)
    for name, ba in ours.items():
        torch.testing.assert_close(ba, theirs[name], **TOL)

    # unconverted files ("pissa" in the config): either library redoes the SVD on the
    # *original* base (the residual), then loads the trained tensors
    L.save_adapter(mine, tmp_path / "ours")
    loaded = PeftModel.from_pretrained(deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(logits(loaded), logits(mine), **TOL)
    pm.save_pretrained(tmp_path / "peft")
    back = deepcopy(base)
    L.load_adapter(back, tmp_path / "peft")
    torch.testing.assert_close(logits(back), logits(pm), **TOL)

    # converted: a rank-8 LoRA adapter for the original base, W + delta == the trained model
    L.save_adapter(mine, tmp_path / "lora", initial_adapter=tmp_path / "initial")
    cfg = L.read_adapter_config(tmp_path / "lora")
    assert (cfg.r, cfg.lora_alpha, cfg.init_lora_weights) == (8, 16, True)
    plain = deepcopy(base)
    L.load_adapter(plain, tmp_path / "lora")
    torch.testing.assert_close(logits(plain), logits(mine), **TOL)
    theirs_plain = PeftModel.from_pretrained(deepcopy(base), tmp_path / "lora")
    torch.testing.assert_close(logits(theirs_plain), logits(mine), **TOL)
    pm.save_pretrained(tmp_path / "peft-lora",
                       path_initial_model_for_weight_conversion=str(tmp_path / "peft-initial"))
    a = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "peft-lora" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    products = {}
    for f in (a, b):  # compare B' A' (rank 8), again not the factors
        products[id(f)] = {k: f[k.replace("lora_A", "lora_B")] @ f[k] for k in f if "lora_A" in k}
    for k, v in products[id(a)].items():
        torch.testing.assert_close(v, products[id(b)][k], **TOL)


def test_qpissa_quantizes_the_residual_and_starts_closer(base):
    layer = "layers.0.mlp.down_proj"
    w = base.get_submodule(layer).weight.detach()
    model = deepcopy(base)
    rep = prepare_qlora(model, TARGETS, r=8, alpha=16, init="pissa")
    assert rep.lora.config.init_lora_weights == "pissa"
    lay = model.get_submodule(layer)
    A, B, res = L.pissa_factors(w, 8, 2.0)
    torch.testing.assert_close(lay.delta_weight(), 2.0 * B @ A, **INIT_TOL)
    q_res = dequantize_weight(lay)
    torch.testing.assert_close(q_res, nf4_roundtrip(double_quant=True)(res), atol=0, rtol=0)
    plain = init_error(w, nf4_roundtrip(double_quant=True)(w))
    qpissa = init_error(w, q_res, lay.delta_weight())
    assert qpissa < 0.9 * plain  # computed on a real layer, not taken from the paper


def test_refuses_pissa_on_a_4bit_layer_as_peft_does(base):
    model = deepcopy(base)
    quantize_model(model, ["q_proj"], backend="bnb")
    with pytest.raises(TypeError, match="needs the float weight.*prepare_qlora"):
        L.add_lora(model, ["q_proj"], r=4, alpha=8, init="pissa")
    model.is_loaded_in_4bit = True  # what transformers sets; PEFT then wraps bnb's layer
    with pytest.raises(TypeError, match="initialize PiSSA under float32"):
        get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                         init_lora_weights="pissa"))
    with pytest.raises(ValueError, match="init must be one of"):
        L.add_lora(deepcopy(base), ["q_proj"], r=4, alpha=8, init="olora")
    with pytest.raises(ValueError, match="pissa.*is for linear layers"):
        L.add_lora(deepcopy(base), ["embed_tokens"], r=4, alpha=8, init="pissa")
    model = deepcopy(base)  # block 0's q_proj in float, block 1's in 4 bits
    quantize_model(model, re.compile(r"layers\.1\.self_attn\.q_proj"), backend="labkit")
    with pytest.raises(TypeError, match="needs the float weight"):
        L.add_lora(model, ["q_proj"], r=4, alpha=8, init="pissa")
    w0 = model.get_submodule("layers.0.self_attn.q_proj").weight  # checked before any
    assert torch.equal(w0, base.get_submodule("layers.0.self_attn.q_proj").weight)  # change
    with pytest.raises(ValueError, match="converts a PiSSA adapter"):
        plain = deepcopy(base)
        L.add_lora(plain, ["q_proj"], r=4, alpha=8)
        L.save_adapter(plain, "/nonexistent", initial_adapter="/nonexistent")
