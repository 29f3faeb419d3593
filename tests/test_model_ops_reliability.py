"""Operations that change a model leave it as it was when they fail, and refuse NaN / inf.

Every failing call below is followed by a comparison with a deep snapshot taken before it:
each state-dict tensor bit for bit, the class of every module, ``requires_grad`` of every
parameter, and the adapters (names per layer, the active / merged one, on or off, and the
model's adapter configs). Here: add_lora, merge_lora / merge_qlora, quantize_model and
prepare_qlora; load_adapter and the files it reads are in test_adapter_files_reliability.py,
which shares the snapshot helpers below.
"""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from labkit import _deps, models, qlora  # noqa: E402
from labkit import lora as L  # noqa: E402

_deps.import_bnb()  # quietly, before anything else imports it

ATTN = ["q_proj", "v_proj"]
NOT_FINITE = [float("inf"), float("-inf"), float("nan")]


# --------------------------------------------------------------------------- snapshots


def snapshot(model: nn.Module) -> dict:
    """Everything an operation could change, as plain values and byte copies."""
    return {
        "state": {k: v.detach().contiguous().reshape(-1).view(torch.uint8).clone()
                  for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
        "dtypes": {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()
                   if isinstance(v, torch.Tensor)},
        "classes": {n: type(m) for n, m in model.named_modules()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
        "adapters": {n: (sorted(lay.r), lay.active_adapter, lay.merged_adapter,
                         lay.adapters_enabled) for n, lay in L.lora_layers(model)},
        "configs": {k: (c.r, c.lora_alpha, list(c.target_modules))
                    for k, c in model.__dict__.get("_lora_configs", {}).items()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("classes", "grads", "adapters", "configs", "dtypes"):
        assert after[key] == before[key], key
    changed = [k for k in before["state"] if not torch.equal(after["state"][k],
                                                            before["state"][k])]
    assert not changed, f"tensors changed bit-wise: {changed}"


def fails_unchanged(model, exc, match, fn, *args, **kw):
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        fn(model, *args, **kw)
    assert_unchanged(model, before)


def tiny():
    torch.manual_seed(0)
    return models.build("tiny")


def randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in L.get_adapter_params(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def poison(model, key_part, value=float("nan")):
    """Write one NaN / inf into the first parameter whose name contains ``key_part``."""
    name, p = next((n, p) for n, p in model.named_parameters() if key_part in n)
    with torch.no_grad():
        p.view(-1)[3] = value
    return name


# --------------------------------------------------------------------------- add_lora


@pytest.mark.parametrize("kw, match", [
    (dict(r=4, alpha=float("inf")), "alpha must be a positive number, finite.*alpha=inf"),
    (dict(r=4, alpha=float("nan")), "alpha must be a positive number"),
    (dict(r=float("inf"), alpha=8), "rank r must be a positive int"),
    (dict(r=4, alpha=8, dropout=float("nan")), r"dropout must lie in \[0, 1\)"),
    (dict(r=4, alpha=8, dropout=float("inf")), r"dropout must lie in \[0, 1\)"),
    (dict(r=4, alpha=8, adapter_name="my-adapter"), "must be a Python identifier"),
    (dict(r=4, alpha=8, adapter_name="first"), "already has a LoRA adapter named 'first'"),
    (dict(r=4, alpha=8, bias="some"), "bias must be one of"),
])
def test_add_lora_refuses_and_leaves_the_model(kw, match):
    m = tiny()
    L.add_lora(m, ["q_proj"], r=2, alpha=4, adapter_name="first")
    randomize(m)
    fails_unchanged(m, ValueError, match, L.add_lora, ATTN, **kw)


def test_add_lora_rolls_back_an_unforeseen_error(monkeypatch):
    """A failure after the layers were wrapped (here: forced) undoes the wrapping too."""
    m = tiny()
    L.add_lora(m, ["q_proj"], r=2, alpha=4, adapter_name="first")

    def broken(*a, **k):
        raise RuntimeError("simulated failure after injection")

    monkeypatch.setattr(L.inject, "set_adapter", broken)
    fails_unchanged(m, RuntimeError, "simulated", L.add_lora, ["q_proj", "up_proj"], r=4,
                    alpha=8, adapter_name="second")


@pytest.mark.parametrize("alpha", NOT_FINITE)
def test_layers_refuse_non_finite_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        L.LoRALinear(nn.Linear(8, 8), r=2, alpha=alpha)
    layer = L.LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        layer.add_adapter("other", 2, alpha)
    assert layer.adapter_names == ["default"]


# --------------------------------------------------------------------------- merge_lora


class LinearLike(nn.Module):
    """Linear-like (in/out features) but without a dense ``weight``: LoRA wraps it, yet
    cannot merge into it."""

    def __init__(self, k, d):
        super().__init__()
        self.in_features, self.out_features = k, d
        self.w = nn.Parameter(torch.randn(d, k))

    def forward(self, x):
        return x @ self.w.T


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = LinearLike(6, 6)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_merge_lora_refuses_a_non_finite_adapter_naming_the_layer(value):
    m = tiny()
    L.add_lora(m, ATTN, r=2, alpha=4)
    randomize(m)
    bad = poison(m, "layers.1.self_attn.v_proj.lora_B", value)
    layer = bad.removesuffix(".lora_B.default.weight")
    fails_unchanged(m, ValueError, re.escape(f"adapter 'default' on layer {layer!r}")
                    + ".*NaN.*inf.*nothing was merged", L.merge_lora)
    for fn in (L.merged_state_dict, L.unload_lora):  # nothing poisoned anywhere else either
        fails_unchanged(m, ValueError, re.escape(layer), fn)


def test_merge_lora_checks_every_layer_before_writing():
    """Layer ``a`` merges, ``b`` has no dense weight: nothing may be merged at all."""
    m = TwoLayers()
    L.add_lora(m, ["a", "b"], r=2, alpha=4)
    randomize(m)
    fails_unchanged(m, TypeError, "cannot merge into a LinearLike base", L.merge_lora)
    fails_unchanged(m, TypeError, "cannot merge into a LinearLike base", L.unload_lora)


def test_merge_lora_other_refusals_leave_the_model():
    m = tiny()
    L.add_lora(m, ATTN, r=2, alpha=4)
    randomize(m)
    L.disable_adapters(m)
    fails_unchanged(m, RuntimeError, "adapters are disabled", L.merge_lora)
    L.enable_adapters(m)
    L.merge_lora(m)
    fails_unchanged(m, RuntimeError, "already merged", L.merge_lora)
    fails_unchanged(tiny(), ValueError, "no LoRA layers", L.merge_lora)


def test_merge_qlora_refuses_a_non_finite_adapter():
    m = tiny()
    qlora.prepare_qlora(m, ATTN, r=2, alpha=4, backend="labkit")
    randomize(m)
    bad = poison(m, "layers.0.self_attn.v_proj.lora_A", float("inf"))
    layer = bad.removesuffix(".lora_A.default.weight")
    fails_unchanged(m, ValueError, re.escape(f"on layer {layer!r}"), qlora.merge_qlora)
    fails_unchanged(m, ValueError, re.escape(f"on layer {layer!r}"),
                    qlora.merged_16bit_state_dict)


# --------------------------------------------------------------------------- quantize / prepare


class NoBlocks(nn.Module):
    """Linear layers, but neither a labkit LlamaLM nor a ``blocks`` list to checkpoint."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(64, 64)
        self.v_proj = nn.Linear(64, 64)

    def forward(self, x):
        return self.v_proj(self.q_proj(x))


@pytest.mark.parametrize("backend", ["labkit", "bnb"])
@pytest.mark.parametrize("op", ["quantize_model", "prepare_qlora"])
def test_non_finite_weights_are_refused_by_both_back_ends(backend, op):
    """NaN in the *last* target: nothing may be quantized (labkit's back end used to refuse
    only when it got there; bitsandbytes' built an all-NaN layer without a word)."""
    m = tiny()
    bad = poison(m, "layers.1.self_attn.v_proj.weight").removesuffix(".weight")
    fails_unchanged(m, ValueError, re.escape(f"layer {bad!r} got 1 NaN and 0 inf"),
                    getattr(qlora, op), ATTN, backend=backend)


@pytest.mark.parametrize("backend", ["labkit", "bnb"])
def test_quantize_linear_refuses_non_finite_weights(backend):
    lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight[5, 7] = float("inf")
    with pytest.raises(ValueError, match="quantize_linear got 0 NaN and 1 inf"):
        qlora.quantize_linear(lin, backend=backend)


@pytest.mark.parametrize("backend", ["labkit", "bnb"])
def test_quantize_model_checks_every_layer_first(backend):
    m = tiny()
    m.layers[1].self_attn.v_proj.double()  # float64: neither back end quantizes it
    fails_unchanged(m, TypeError, "layer 'layers.1.self_attn.v_proj'.*float64",
                    qlora.quantize_model, ATTN, backend=backend)
    m = tiny()
    fails_unchanged(m, ValueError, "not 'int4'", qlora.quantize_model, ATTN, backend="bnb",
                    quant_type="int4")
    fails_unchanged(m, ValueError, "blocksize 3", qlora.quantize_model, ATTN, blocksize=3)
    fails_unchanged(m, ValueError, "match no module", qlora.quantize_model, ["nope"])


@pytest.mark.parametrize("kw, match", [
    (dict(adapter_name="first"), "already has a LoRA adapter named 'first'"),
    (dict(adapter_name="not valid"), "must be a Python identifier"),
    (dict(alpha=float("inf")), "alpha must be a positive number, finite"),
    (dict(r=0), "rank r must be a positive int"),
    (dict(backend="fast"), "unknown backend"),
])
def test_prepare_qlora_refuses_before_quantizing(kw, match):
    m = tiny()
    L.add_lora(m, ["o_proj"], r=2, alpha=4, adapter_name="first")
    fails_unchanged(m, ValueError, match, qlora.prepare_qlora, ATTN,
                    **{"backend": "labkit", **kw})
    # and a retry with good input works (the full-precision weights are still there)
    rep = qlora.prepare_qlora(m, ATTN, backend="labkit", adapter_name="second")
    assert rep.quant.layers == [f"layers.{i}.self_attn.{p}" for i in (0, 1) for p in ATTN]


def test_prepare_qlora_checks_gradient_checkpointing_before_quantizing():
    m = NoBlocks()
    fails_unchanged(m, ValueError, "nothing|no labkit LlamaLM", qlora.prepare_qlora,
                    ["q_proj", "v_proj"], backend="labkit", gradient_checkpointing=True)
