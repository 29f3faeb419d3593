"""Memory accounting: measured bytes of real steps against the estimator, published figures.

The estimator (labkit.memory.estimate) was written against the shipped tiny model only;
SECOND below is a configuration it never saw (other width, depth, heads, GQA ratio,
batch and sequence length). Both must agree with measurement within 5 % per component.
"""

from labkit._deps import import_bnb

import pytest
import torch

from labkit import data, lora, memory, models, qlora, quant

#: Not used while writing the estimator: hidden 192 (head_dim 32), 6 heads sharing 2 k/v
#: heads (groups of 3), intermediate 448, 3 layers.
SECOND = models.ModelConfig(128, 192, 448, 3, 6, 2, max_seq_len=64, name="second")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"lora": ["q_proj", "v_proj", "down_proj"], "qlora": list(memory.BLOCK_LINEARS)}


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


def _model(which: str, method: str, dtype: torch.dtype, r: int = 4, backend: str = "bnb"):
    torch.manual_seed(0)
    if which == "pretrained":
        m = models.load_pretrained().model.to(dtype)
    else:
        m = models.build(SECOND).to(dtype)
    if method == "qlora":  # the course's path: bitsandbytes NF4 + double quant + adapters
        qlora.prepare_qlora(m, TARGETS["qlora"], r=r, alpha=2 * r, compute_dtype=dtype,
                            backend=backend)
    elif method == "lora":
        lora.add_lora(m, TARGETS[method], r=r, alpha=2 * r)
    return m


def _batch(which: str):
    if which == "pretrained":
        return data.get_task("shift").batch(3, seed=7)  # (3, T) with padding and -100 labels
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (5, 37), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, :10] = data.IGNORE_INDEX  # a prompt that takes no loss
    return ids, labels


def _config(which: str):
    return models.load_pretrained().model.config if which == "pretrained" else SECOND


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("which", ["pretrained", "second"])
def test_estimate_agrees_with_measurement(which, method, dtype, ckpt):
    r = 4
    m = _model(which, method, DTYPES[dtype], r)
    batch = _batch(which)
    meas = memory.measure(m, batch, "adamw", gradient_checkpointing=ckpt)
    B, T = batch[0].shape
    kw = ({"weight_dtype": "nf4", "compute_dtype": dtype} if method == "qlora"
          else {"weight_dtype": dtype})
    est = memory.estimate(_config(which), method, B, T, optimizer="adamw", r=r,
                          targets=TARGETS.get(method, memory.BLOCK_LINEARS),
                          gradient_checkpointing=ckpt, **kw)
    for c in ("weights", "gradients", "optimizer", "activations", "recompute", "total"):
        got, want = getattr(est, c), getattr(meas, c)
        assert got == pytest.approx(want, rel=0.05), f"{c}: estimate {got} vs measured {want}"
    assert (meas.recompute > 0) == ckpt
    assert sum(v for k, v in est.terms.items() if k.startswith("activations/")) == \
        est.activations  # the named terms add up to the component


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("cfg", [
    models.ModelConfig(128, 128, 320, 2, 4, 4, max_seq_len=64, name="mha"),
    models.ModelConfig(128, 128, 256, 2, 4, 1, max_seq_len=64, tie_embeddings=True, name="tied"),
], ids=["mha", "tied-mqa"])
def test_estimate_agrees_on_mha_tied_and_partial_targets(cfg, method, ckpt):
    """Plain multi-head attention, a tied head with one k/v head, and targets that leave the
    first block's q, v and MLP gate frozen (what requires grad changes what is saved)."""
    torch.manual_seed(0)
    m = models.build(cfg).to(torch.bfloat16)
    targets = ["k_proj", "o_proj", "up_proj"]
    if method == "lora":
        lora.add_lora(m, targets, r=4, alpha=8)
    elif method == "qlora":
        qlora.prepare_qlora(m, targets, r=4, alpha=8, compute_dtype=torch.bfloat16,
                            backend="bnb")
    ids = torch.randint(3, 128, (2, 23))
    meas = memory.measure(m, (ids, ids.clone()), gradient_checkpointing=ckpt)
    est = memory.estimate(cfg, method, 2, 23, weight_dtype="nf4" if method == "qlora" else "bf16",
                          compute_dtype="bf16", r=4, targets=targets, gradient_checkpointing=ckpt)
    for c in ("weights", "gradients", "optimizer", "activations", "recompute", "total"):
        assert getattr(est, c) == pytest.approx(getattr(meas, c), rel=0.05), c


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("targets", [list(memory.BLOCK_LINEARS), ["k_proj", "o_proj", "up_proj"]],
                         ids=["all", "partial"])
def test_estimate_under_autocast_counts_what_autocast_saves(targets, method, ckpt):
    """labkit's GPU path: a bf16 base, fp32 adapters, the step under torch.autocast (here on
    the CPU). Each adapter then saves bf16 copies of its input, A's output and its weights."""
    cfg = models.ModelConfig(128, 128, 352, 2, 4, 2, max_seq_len=64, name="gqa")
    torch.manual_seed(0)
    m = models.build(cfg).to(torch.bfloat16)
    if method == "lora":
        lora.add_lora(m, targets, r=8, alpha=16)  # adapters in fp32, as in PEFT
    else:
        qlora.prepare_qlora(m, targets, r=8, alpha=16, compute_dtype=torch.bfloat16,
                            backend="bnb")
    ids = torch.randint(3, 128, (4, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        meas = memory.measure(m, (ids, ids.clone()), gradient_checkpointing=ckpt)
    kw = {"weight_dtype": "nf4"} if method == "qlora" else {"weight_dtype": "bf16"}
    est = memory.estimate(cfg, method, 4, 20, compute_dtype="bf16", r=8, targets=targets,
                          gradient_checkpointing=ckpt, autocast=True, **kw)
    assert (est.activations, est.recompute) == (meas.activations, meas.recompute)
    plain = memory.estimate(cfg, method, 4, 20, compute_dtype="bf16", r=8, targets=targets,
                            gradient_checkpointing=ckpt, **kw)
    assert plain.activations + plain.recompute > meas.activations + meas.recompute
    with pytest.raises(ValueError, match="autocast is modelled for LoRA and QLoRA"):
        memory.estimate(cfg, "full", 4, 20, weight_dtype="bf16", autocast=True)


def test_measure_sees_qlora_checkpointing_wrapper():
    """labkit.qlora.enable_gradient_checkpointing wraps each block's forward instead of
    setting the model flag; measure() notices it and still counts one block's recompute."""
    m = models.load_pretrained().model
    qlora.prepare_qlora(m, TARGETS["qlora"], r=4, alpha=8, compute_dtype=torch.float32,
                        backend="bnb", gradient_checkpointing=True)
    assert m.gradient_checkpointing is False
    batch = _batch("pretrained")
    meas = memory.measure(m, batch)
    est = memory.estimate(m.config, "qlora", *batch[0].shape, compute_dtype="fp32", r=4,
                          targets=TARGETS["qlora"], gradient_checkpointing=True)
    assert meas.recompute > 0
    for c in ("activations", "recompute", "total"):
        assert getattr(est, c) == pytest.approx(getattr(meas, c), rel=0.05), c


def test_labkit_4bit_backend_agrees():
    """labkit's own 4-bit layer (labkit.quant) holds the same state as bitsandbytes', except
    that a double-quantized absmax of fewer than 256 blocks keeps a 256-byte storage."""
    m = _model("second", "qlora", torch.bfloat16, backend="labkit")
    batch = _batch("second")
    meas = memory.measure(m, batch)
    est = memory.estimate(SECOND, "qlora", *batch[0].shape, compute_dtype="bf16", r=4,
                          targets=TARGETS["qlora"])
    assert meas.weights_by_dtype["4bit"] == est.weights_by_dtype["4bit"]
    for c in ("weights", "gradients", "optimizer", "activations", "total"):
        assert getattr(est, c) == pytest.approx(getattr(meas, c), rel=0.05), c


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum", "adamw", "paged_adamw", "adamw8bit"])
@pytest.mark.filterwarnings("ignore:Paged optimizers")
def test_optimizer_state_agrees(optimizer):
    m = _model("second", "full", torch.float32)
    batch = _batch("second")
    meas = memory.measure(m, batch, optimizer)
    est = memory.estimate(SECOND, "full", *batch[0].shape, optimizer=optimizer)
    assert est.optimizer == pytest.approx(meas.optimizer, rel=0.05)
    n = models.count_params(SECOND)
    if optimizer == "sgd":
        assert meas.optimizer == 0
    elif optimizer == "sgd_momentum":
        assert meas.optimizer == 4 * n
    elif optimizer == "adamw":  # two fp32 moments + a 4-byte step per tensor
        assert meas.optimizer == 8 * n + 4 * len(list(m.parameters()))


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
    ids, labels = _batch("pretrained")
    grads, acts = [], []
    for ckpt in (False, True):
        m = models.load_pretrained().model
        m.train()
        m.gradient_checkpointing = ckpt
        from labkit.train import lm_loss

        with memory.SavedTensorCounter(memory.model_storages(m)) as c:
            loss = lm_loss(m(ids), labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        acts.append(c.nbytes)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=0)
    assert acts[1] < acts[0] / 2


def test_measure_restores_checkpointing_flag_and_counts_grads():
    m = _model("pretrained", "lora", torch.float32)
    assert m.gradient_checkpointing is False
    b = memory.measure(m, _batch("pretrained"), "sgd", gradient_checkpointing=True)
    assert m.gradient_checkpointing is False
    n_adapter = lora.count_params(m).trainable
    assert b.gradients == 4 * n_adapter and b.optimizer == 0


# --------------------------------------------------------------------------- published figures


def test_llama_65b_full_finetuning_published_range():
    """16-bit full fine-tuning of LLaMA-65B with Adam needs more than 780 GB (QLoRA paper,
    abstract). GB = 10^9 bytes. Lower convention: bf16 weights and grads, fp32 Adam moments
    (2 + 2 + 8 = 12 B/param); upper: plus an fp32 master copy (16 B/param); batch 1,
    sequence 512 with gradient checkpointing. Both lie in [780, 1100] GB."""
    kw = dict(weight_dtype="bf16", state_dtype="fp32", gradient_checkpointing=True)
    low = memory.estimate("llama-1-65b", "full", 1, 512, **kw)
    high = memory.estimate("llama-1-65b", "full", 1, 512, master_weights=True, **kw)
    n = models.count_params("llama-1-65b")
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
    n = models.count_params(cfg)
    other = 2 * cfg.vocab_size * cfg.hidden_size + (2 * cfg.n_layers + 1) * cfg.hidden_size
    rough = (n - other) * quant.bits_per_weight("nf4", 64, True) / 8 + 2 * other
    assert nbytes == pytest.approx(rough, rel=0.001)


def test_bytes_per_param_full_adamw_fp32_is_16():
    est = memory.estimate("llama-2-7b", "full", 1, 1, weight_dtype="fp32")
    bpp = memory.bytes_per_param(est, models.count_params("llama-2-7b"))
    assert bpp["weights"] == pytest.approx(4, rel=1e-3)
    assert bpp["gradients"] == pytest.approx(4, rel=1e-3)
    assert bpp["optimizer"] == pytest.approx(8, rel=1e-3)


def test_fits_and_dominant():
    est = memory.estimate("llama-2-7b", "full", 1, 512, weight_dtype="bf16")
    assert memory.dominant(est) == "optimizer"
    assert est.total == pytest.approx(57.6e9, rel=0.01)  # 2 + 2 + 4 B/param + activations
    assert not memory.fits(est, 48) and memory.fits(est, 80)


def test_fits_counts_device_memory_in_gib():
    """GPU memory is sold in GiB: an "80 GB" card holds 80 * 2^30 bytes (85.9e9)."""
    b = memory.MemoryBreakdown(weights=80 * 1024**3)
    assert memory.fits(b, 80)
    b.activations = 1  # one byte more than 80 GiB
    assert not memory.fits(b, 80)
    # 7B full fine-tuning at 12 B/param: 81.2e9 B, above 80e9 but below 80 GiB
    est = memory.estimate("llama-2-7b", "full", 1, 512, weight_dtype="bf16", state_dtype="fp32",
                          gradient_checkpointing=True)
    assert 80e9 < est.total < 80 * 1024**3 and memory.fits(est, 80)
    with pytest.raises(ValueError, match="device_gib must be > 0"):
        memory.fits(b, 0)


def test_stack_can_keep_recompute_apart():
    est = memory.estimate("llama-2-7b", "qlora", 1, 512, gradient_checkpointing=True)
    four, five = est.stack(), est.stack(separate_recompute=True)
    assert est.recompute > 0 and five["recompute"] == est.recompute
    assert five["activations"] == est.activations
    assert four["activations"] == est.activations + est.recompute
    assert sum(four.values()) == sum(five.values()) == est.total


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
    b = memory.measure(m, _batch("pretrained"))
    assert b.peak_allocated is not None and b.peak_allocated >= b.weights


def test_breakdown_table_stack_and_units():
    b = memory.MemoryBreakdown(weights=2_000_000, gradients=1_000_000, optimizer=500_000,
                               activations=240_000, recompute=50_000, label="x")
    assert b.total == 3_790_000
    assert b.stack()["activations"] == 290_000  # recompute is drawn with the activations
    assert b.table("MB").splitlines()[1:] == [
        "weights            2.0 MB", "gradients          1.0 MB", "optimizer          0.5 MB",
        "activations        0.2 MB", "recompute          0.1 MB", "total              3.8 MB"]
    with pytest.raises(ValueError, match="unit must be 'MB' or 'GB'"):
        b.table("GiB")
