"""labkit.memory.measurement: weight bytes, the saved-tensor counter, measure()'s checks.

Agreement of measure() with the estimator is in tests/test_memory.py.
"""

from labkit._deps import import_bnb

import pytest
import torch

from labkit import data, memory, models, quant
from labkit.train import lm_loss


def _to_4bit(model: torch.nn.Module, targets, dtype: torch.dtype) -> torch.nn.Module:
    """Replace the targeted linears by bitsandbytes NF4 Linear4bit (double quantization)."""
    bnb = import_bnb()
    for name, mod in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in targets and isinstance(mod, torch.nn.Linear):
            q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=False,
                                  compute_dtype=dtype, compress_statistics=True,
                                  quant_type="nf4")
            q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False,
                                         compress_statistics=True, quant_type="nf4")
            q = q.to("cpu")  # quantizes
            q.support_avx512bf16_for_cpu = False  # no inference repack: we train through it
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q)
    return model


def test_weight_bytes_of_4bit_layer_match_quantized_nbytes():
    lin = torch.nn.Sequential(torch.nn.Linear(256, 192, bias=False))
    _to_4bit(lin, ["0"], torch.float32)
    total, by = memory.weight_bytes(lin)
    assert total == quant.quantized_nbytes(256 * 192, 64, double_quant=True)
    assert by["4bit"] == 256 * 192 // 2


def test_saved_tensor_counter_dedups_views_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(8, 4))
    x = torch.randn(3, 8, requires_grad=True)
    keys = {memory._storage_key(w)}
    with memory.SavedTensorCounter(keys) as c:
        y = x @ w            # saves x (for w's grad) and w (a parameter: excluded)
        z = y.view(-1) * y.view(-1)  # saves the same storage twice: counted once
    z.sum().backward()
    assert c.nbytes == 3 * 8 * 4 + 3 * 4 * 4


def test_checkpointing_keeps_gradients_and_saves_memory():
    ids, labels = data.get_task("shift").batch(3, seed=7)
    grads, acts = [], []
    for ckpt in (False, True):
        m = models.load_pretrained().model
        m.train()
        m.gradient_checkpointing = ckpt
        with memory.SavedTensorCounter(memory.model_storages(m)) as c:
            loss = lm_loss(m(ids), labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        acts.append(c.nbytes)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=0)
    assert acts[1] < acts[0] / 2


def test_measure_bad_input():
    m = models.build("tiny")
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="batch must be \\(input_ids, labels\\)"):
        memory.measure(m, ids)
    with pytest.raises(ValueError, match="labels must have the shape"):
        memory.measure(m, (ids, ids[:, :3]))
    with pytest.raises(ValueError, match="unknown optimizer 'adam9'"):
        memory.measure(m, (ids, ids), "adam9")
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        memory.measure(m, (ids, ids))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for the allocator peak")
def test_cuda_peak_is_reported():  # pragma: no cover - CPU machines skip it
    m = models.build("tiny", device="cuda")
    b = memory.measure(m, data.get_task("shift").batch(3, seed=7))
    assert b.peak_allocated is not None and b.peak_allocated >= b.weights

