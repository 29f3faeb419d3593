"""DoRA (labkit.lora.dora) against PEFT's use_dora=True on the course model: the magnitude
at init, outputs and tensors after training steps, the detached norm, merging, adapter files
both ways, and the parameter counts and memory estimate that include the magnitude.

Tolerances: see tests/lora_variants_common.py.
"""

from __future__ import annotations

import random

import pytest
import torch
from lora_variants_common import (
    FILTERS,
    IDS,
    INIT_TOL,
    TARGETS,
    TOL,
    copy_adapters,
    course_model,
    deepcopy,
    logits,
    peft_name,
    run,
)
from peft import LoraConfig, PeftModel, get_peft_model

from labkit import lora as L
from labkit import memory as M
from labkit.data import get_task

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]


@pytest.fixture(scope="module")
def base():
    return course_model()


def pair(base, **cfg):
    """labkit's and PEFT's DoRA model on the same weights, with the same adapter values."""
    mine = deepcopy(base)
    L.add_lora(mine, TARGETS, r=4, alpha=8, use_dora=True, **cfg)
    pm = get_peft_model(deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                   use_dora=True))
    mags = {n: p for n, p in mine.named_parameters() if "magnitude" in n}
    assert len(mags) == 8  # 4 targets x 2 blocks
    for n, m in mags.items():  # computed apart on each side: ||W|| per output row
        torch.testing.assert_close(m, pm.get_parameter(peft_name(n)), **INIT_TOL)
        w = base.get_parameter(n.replace("lora_magnitude_vector.default", "weight")
                               .replace(".base_layer", ""))
        torch.testing.assert_close(m, w.norm(dim=1), **INIT_TOL)
    copy_adapters(mine, pm)
    return mine, pm


def test_dora_trains_like_peft(base):
    mine, pm = pair(base)
    torch.testing.assert_close(logits(mine), logits(base), **INIT_TOL)  # B = 0: no change yet
    h1, h2 = run(mine), run(pm)
    assert h1.loss == pytest.approx(h2.loss, rel=1e-5)
    assert not torch.allclose(logits(mine), logits(base), atol=1e-2)
    torch.testing.assert_close(logits(mine), logits(pm), **TOL)
    for n, p in mine.named_parameters():  # A, B and the magnitudes all moved alike
        if p.requires_grad:
            torch.testing.assert_close(p, pm.get_parameter(peft_name(n)), **TOL)
    assert {n for n, p in mine.named_parameters() if p.requires_grad} == {
        n for n, p in L.get_adapter_params(mine).items()}


def test_norm_is_detached_as_in_peft(base):
    """Section 4.3: ||W + sBA|| gets no gradient. With it detached the gradient of m is
    (dL/dy . W'x / m) exactly, and A's and B's gradients are PEFT's."""
    mine, pm = pair(base)
    with torch.no_grad():  # a non-zero B, so that the norm depends on A and B
        for n, p in mine.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    copy_adapters(mine, pm)
    for model in (mine, pm):
        model.train()
        out = model(IDS)
        (out if isinstance(out, torch.Tensor) else out.logits).square().mean().backward()
    for n, p in mine.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, pm.get_parameter(peft_name(n)).grad, **INIT_TOL)
    lay = mine.get_submodule("layers.0.self_attn.q_proj")
    x = torch.randn(3, lay.in_features, requires_grad=False)
    m = lay.lora_magnitude_vector["default"]
    m.grad = None
    lay(x).sum().backward()
    w = lay.base_weight() + lay.delta_weight()
    direction = (x @ w.T) / w.norm(dim=1)  # the unit-norm rows applied to x
    torch.testing.assert_close(m.grad, direction.sum(0), **INIT_TOL)


def test_merge_unmerge_and_merged_weights_equal_peft(base):
    mine, pm = pair(base)
    run(mine), run(pm)
    want = logits(mine)
    merged = L.merged_state_dict(mine)
    peft_merged = deepcopy(pm).merge_and_unload().state_dict()
    for k, v in merged.items():
        torch.testing.assert_close(v, peft_merged[k], **TOL)
    before = {n: p.clone() for n, p in mine.state_dict().items() if "base_layer" in n}
    L.merge_lora(mine)
    torch.testing.assert_close(logits(mine), want, **INIT_TOL)
    L.unmerge_lora(mine)
    torch.testing.assert_close(logits(mine), want, **INIT_TOL)
    for n, p in mine.state_dict().items():
        if n in before:
            torch.testing.assert_close(p, before[n], atol=1e-6, rtol=1e-6)


def test_adapter_files_both_ways(base, tmp_path):
    mine, pm = pair(base)
    run(mine), run(pm)
    L.save_adapter(mine, tmp_path / "ours")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert "base_model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" in keys
    theirs = PeftModel.from_pretrained(deepcopy(base), tmp_path / "ours")
    assert theirs.peft_config["default"].use_dora
    torch.testing.assert_close(logits(theirs), logits(mine), **INIT_TOL)
    pm.save_pretrained(tmp_path / "peft")
    back = deepcopy(base)
    rep = L.load_adapter(back, tmp_path / "peft")
    assert rep.config.use_dora
    torch.testing.assert_close(logits(back), logits(pm), **INIT_TOL)


def test_counts_and_memory_include_the_magnitude(base):
    mine, pm = pair(base)
    c = L.model_params(mine)
    peft_trainable, peft_total = pm.get_nb_trainable_parameters()
    assert (c.trainable, c.total) == (peft_trainable, peft_total)
    plain = L.planned_adapter_params(base, TARGETS, r=4)
    plan = L.planned_adapter_params(base, TARGETS, r=4, use_dora=True)
    d_out = sum(mod.out_features for n, mod in base.named_modules()
                if n.rsplit(".", 1)[-1] in TARGETS)
    assert plan.trainable == plain.trainable + d_out == c.trainable
    ids, labels = get_task("shift").batch(4, rng=random.Random(0))
    for model, dora in ((mine, True), (deepcopy(base), False)):
        if not dora:
            L.add_lora(model, TARGETS, r=4, alpha=8)
        got = M.measure(model, (ids, labels))
        est = M.estimate(model.config, "lora", batch=4, seq_len=ids.shape[1], r=4,
                         targets=TARGETS, use_dora=dora)
        for part in ("weights", "gradients", "optimizer", "activations"):
            assert getattr(est, part) == getattr(got, part), (dora, part)
    with pytest.raises(ValueError, match="autocast"):
        M.estimate(base.config, "lora", seq_len=16, use_dora=True, autocast=True)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_memory_estimate_on_a_config_not_used_to_write_it(method):
    """The DoRA terms were derived on the course model; here another shape, every block
    linear, and a 4-bit base (DoRA then reads the dequantized weight)."""
    from labkit import models
    from labkit.qlora import prepare_qlora

    cfg = models.ModelConfig(128, 48, 80, 3, 4, 2, max_seq_len=24, name="test-dora")
    torch.manual_seed(0)
    model = models.build(cfg)
    if method == "qlora":
        prepare_qlora(model, list(M.BLOCK_LINEARS), r=3, alpha=6, use_dora=True,
                      backend="labkit", double_quant=False)
    else:
        L.add_lora(model, list(M.BLOCK_LINEARS), r=3, alpha=6, use_dora=True)
    ids, labels = get_task("shift").batch(3, rng=random.Random(1))
    got = M.measure(model, (ids[:, :24], labels[:, :24]))
    est = M.estimate(cfg, method, batch=3, seq_len=min(24, ids.shape[1]), r=3,
                     use_dora=True, compute_dtype="fp32" if method == "qlora" else None,
                     double_quant=False)
    for part in ("gradients", "optimizer", "activations"):
        assert getattr(est, part) == getattr(got, part), part
    assert est.weights == pytest.approx(got.weights, rel=0.05)


def test_refusals(base):
    model = deepcopy(base)
    with pytest.raises(ValueError, match="needs a linear layer.*Leave embeddings out"):
        L.add_lora(model, ["embed_tokens", "q_proj"], r=4, alpha=8, use_dora=True)
    assert not list(L.lora_layers(model))  # the model is as it was
    with pytest.raises(ValueError, match="embedding"):
        L.planned_adapter_params(base, ["embed_tokens"], r=4, use_dora=True)
    from labkit.qlora import quantize_model

    quantize_model(model, ["q_proj"], backend="labkit")
    with pytest.raises(ValueError, match="no dense float weight.*prepare_qlora"):
        L.add_lora(model, ["q_proj"], r=4, alpha=8, use_dora=True)


def test_dora_on_a_4bit_base_equals_peft_on_bitsandbytes(base):
    """QLoRA + DoRA: labkit's prepare_qlora(use_dora=True) against PEFT's DoRA on the same
    bitsandbytes 4-bit layers (both dequantize the base to compute the norm)."""
    from labkit.qlora import disable_cpu_inference_repack, prepare_qlora, quantize_model

    mine = deepcopy(base)
    rep = prepare_qlora(mine, TARGETS, r=4, alpha=8, use_dora=True, backend="bnb")
    assert rep.lora.config.use_dora and "DoRA" in str(rep)
    q = deepcopy(base)
    quantize_model(q, TARGETS, backend="bnb")
    q.is_loaded_in_4bit = True  # what transformers sets: PEFT then wraps bnb's layers
    pm = get_peft_model(q, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True))
    disable_cpu_inference_repack(pm)
    for n, p in mine.named_parameters():
        if "magnitude" in n:  # ||dequant(W4)|| per row, computed apart
            torch.testing.assert_close(p, pm.get_parameter(peft_name(n)), **INIT_TOL)
    copy_adapters(mine, pm)
    run(mine), run(pm)
    assert not torch.allclose(logits(mine), logits(base), atol=1e-2)
    torch.testing.assert_close(logits(mine), logits(pm), **TOL)
