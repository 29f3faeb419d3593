"""labkit.memory.estimation: published figures the estimate must land in, and bad input.

GB = 10^9 bytes throughout. Agreement with measured steps is in tests/test_memory.py.
"""

import pytest
import torch

from labkit import lora, memory, models, qlora, quant

# --------------------------------------------------------------------------- published figures


def test_llama_65b_full_finetuning_published_range():
    """16-bit full fine-tuning of LLaMA-65B with Adam needs more than 780 GB (QLoRA paper,
    abstract). GB = 10^9 bytes. Lower convention: bf16 weights and grads, fp32 Adam moments
    (2 + 2 + 8 = 12 B/param); upper: plus an fp32 master copy (16 B/param); batch 1,
    sequence 512 with gradient checkpointing. Both lie in [780, 1100] GB."""
    kw = dict(weight_dtype="bf16", state_dtype="fp32", gradient_checkpointing=True)
    low = memory.estimate("llama-1-65b", "full", 1, 512, **kw)
    high = memory.estimate("llama-1-65b", "full", 1, 512, master_weights=True, **kw)
    n = lora.config_params("llama-1-65b")
    assert low.weights + low.gradients + low.optimizer >= 12 * n
    assert 780 * memory.GB <= low.total < high.total <= 1100 * memory.GB


def test_llama_65b_qlora_fits_one_48gb_gpu():
    """QLoRA paper: LLaMA-65B fine-tunes on one 48 GB GPU. NF4 + double quantization on
    every linear, r = 64 adapters in bf16, bf16 compute, batch 1, sequence 512, gradient
    checkpointing, paged AdamW counted as GPU bytes (worst case). GB = 10^9 bytes."""
    est = memory.estimate("llama-1-65b", "qlora", 1, 512, compute_dtype="bf16",
                          adapter_dtype="bf16", r=64, targets="all-linear",
                          optimizer="paged_adamw", gradient_checkpointing=True)
    assert 40 * memory.GB <= est.total <= 48 * memory.GB


def test_llama_7b_4bit_base_size():
    """The 4-bit LLaMA-7B base: linears NF4 + double quantization, embeddings / head / norms
    bf16: 3.8-3.9 GB (10^9 bytes). The QLoRA paper's larger 5,048 MB is discussed in lesson 06."""
    nbytes = memory.base_weight_bytes("llama-1-7b", "nf4", "bf16")
    assert 3.8 * memory.GB <= nbytes <= 3.9 * memory.GB
    # independent: 4.127 bits per linear weight + 2 bytes per other parameter
    cfg = models.get_config("llama-1-7b")
    n = lora.config_params(cfg)
    other = 2 * cfg.vocab_size * cfg.hidden_size + (2 * cfg.n_layers + 1) * cfg.hidden_size
    rough = (n - other) * quant.bits_per_weight("nf4", 64, True) / 8 + 2 * other
    assert nbytes == pytest.approx(rough, rel=0.001)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, msg", [
    ({"method": "prefix"}, "unknown method 'prefix'"),
    ({"weight_dtype": "fp8"}, "unknown weight dtype 'fp8'"),
    ({"method": "qlora", "weight_dtype": "bf16"}, "stored in 4 bits"),
    ({"optimizer": "adam9"}, "unknown optimizer 'adam9'"),
    ({"batch": 0}, "batch must be a positive int"),
    ({"seq_len": -3}, "seq_len must be a positive int"),
    ({"method": "lora", "targets": ["qproj"]}, "unknown LoRA target"),
    ({"compute_dtype": "bf16"}, "autocast of the base weights is not modelled"),
])
def test_estimate_bad_input(kwargs, msg):
    args = {"config": "tiny", "method": "full", "batch": 1, "seq_len": 8} | kwargs
    with pytest.raises(ValueError, match=msg):
        memory.estimate(**args)


def test_estimate_config_missing_field():
    with pytest.raises(ValueError, match=r"missing field\(s\) \['hidden_size'\]"):
        memory.estimate({"vocab_size": 128, "intermediate_size": 256, "n_layers": 2,
                         "n_heads": 4}, "full", 1, 8)

    class Partial:
        vocab_size, hidden_size = 128, 128

    with pytest.raises(ValueError, match=r"missing field\(s\) \['intermediate_size'"):
        memory.estimate(Partial(), "full", 1, 8)

    class Duck(Partial):  # any object with the fields works
        intermediate_size, n_layers, n_heads = 256, 2, 4

    assert memory.estimate(Duck(), "full", 1, 8).total == memory.estimate(
        models.ModelConfig(128, 128, 256, 2, 4), "full", 1, 8).total
    with pytest.raises(ValueError, match="unknown model config 'llama-99b'"):
        memory.estimate("llama-99b", "full", 1, 8)



@pytest.mark.parametrize("backend", ["bnb", "labkit"])
def test_base_weight_bytes_from_a_config_is_the_built_models_plus_its_buffers(backend):
    """memory.base_weight_bytes(config) counts what qlora.base_weight_bytes(model) counts on
    the quantized model, plus the buffers (the RoPE tables), byte for byte."""
    cfg = models.get_config("tiny")
    m = models.build(cfg).to(torch.bfloat16)
    qlora.quantize_model(m, list(memory.BLOCK_LINEARS), backend=backend,
                         compute_dtype=torch.bfloat16)
    rope = 2 * cfg.max_seq_len * cfg.head_dim * 2  # the cos and sin tables, bf16
    assert rope == sum(t.numel() * t.element_size() for t in (m.rope.cos, m.rope.sin))
    assert memory.base_weight_bytes(cfg, "nf4", "bf16") == qlora.base_weight_bytes(m) + rope


def test_a_sequence_longer_than_the_model_takes_is_refused():
    """The model refuses seq_len > max_seq_len (its rotary tables end there); so does the
    estimate, instead of returning a number for a step that cannot run."""
    cfg = models.get_config("llama-1-7b")
    assert memory.estimate(cfg, "qlora", 1, cfg.max_seq_len).total > 0
    with pytest.raises(ValueError, match="seq_len=2049 is longer than llama-1-7b's max_seq_len "
                                         "2048; use at most 2048"):
        memory.estimate(cfg, "qlora", 1, 2049)
