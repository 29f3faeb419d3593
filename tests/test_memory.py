"""Memory accounting: measured bytes of real steps against the estimator.

The estimator (labkit.memory.estimate) was written against the shipped tiny model only;
SECOND below is a configuration it never saw (other width, depth, heads, GQA ratio,
batch and sequence length). Both must agree with measurement within 5 % per component.

The modules' own tests: tests/test_memory_breakdown.py, test_memory_measurement.py,
test_memory_estimation.py (published figures, bad input).
"""

import pytest
import torch

from labkit import data, lora, memory, models, qlora

#: Not used while writing the estimator: hidden 192 (head_dim 32), 6 heads sharing 2 k/v
#: heads (groups of 3), intermediate 448, 3 layers.
SECOND = models.ModelConfig(128, 192, 448, 3, 6, 2, max_seq_len=64, name="second")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"lora": ["q_proj", "v_proj", "down_proj"], "qlora": list(memory.BLOCK_LINEARS)}


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
    the CPU). Each adapter then saves its bf16 input as it is (one storage shared with the
    other readers), A's bf16 output and bf16 copies of its weights."""
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


def test_measure_sees_prepare_qlora_checkpointing():
    """prepare_qlora(gradient_checkpointing=True) flips the model's one switch
    (models.set_gradient_checkpointing); measure() counts one block's recompute."""
    m = models.load_pretrained().model
    qlora.prepare_qlora(m, TARGETS["qlora"], r=4, alpha=8, compute_dtype=torch.float32,
                        backend="bnb", gradient_checkpointing=True)
    assert m.gradient_checkpointing is True
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
    n = lora.config_params(SECOND)
    if optimizer == "sgd":
        assert meas.optimizer == 0
    elif optimizer == "sgd_momentum":
        assert meas.optimizer == 4 * n
    elif optimizer == "adamw":  # two fp32 moments + a 4-byte step per tensor
        assert meas.optimizer == 8 * n + 4 * len(list(m.parameters()))


def test_measure_restores_checkpointing_flag_and_counts_grads():
    m = _model("pretrained", "lora", torch.float32)
    assert m.gradient_checkpointing is False
    b = memory.measure(m, _batch("pretrained"), "sgd", gradient_checkpointing=True)
    assert m.gradient_checkpointing is False
    n_adapter = lora.model_params(m).trainable
    assert b.gradients == 4 * n_adapter and b.optimizer == 0
