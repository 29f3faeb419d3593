"""labkit.lora without PEFT: layers, injection, merging, switching,
accounting, adapter files and bad input. Every number is compared with an independent
computation (the formula written out with plain tensors)."""

import copy
import json
import math
import os
import re
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

from labkit import adapters, models  # noqa: E402
from labkit import lora as L  # noqa: E402
from labkit._api import LabkitDeprecationWarning  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize(model, seed=1):
    """Give every adapter tensor random values, so B A != 0 and comparisons can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in L.get_adapter_params(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


class MLP(nn.Module):
    def __init__(self, d=12, h=20, bias=True):
        super().__init__()
        self.emb = nn.Embedding(10, d)
        self.up = nn.Linear(d, h, bias=bias)
        self.act = nn.GELU()
        self.down = nn.Linear(h, d, bias=bias)
        self.head = nn.Linear(d, 10, bias=bias)

    def forward(self, ids):
        x = self.emb(ids)
        return self.head(x + self.down(self.act(self.up(x))))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 0, 1, 6]])
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- layers


def test_adapter_params_is_r_times_d_plus_k():
    assert L.adapter_params(1024, 1024, 8) == 16_384
    layer = L.LoRALinear(nn.Linear(40, 24), r=3, alpha=6)  # W is d x k = 24 x 40
    n = sum(p.numel() for p in L.get_adapter_params(layer).values())
    assert n == L.adapter_params(24, 40, 3) == 3 * 64
    with pytest.raises(ValueError, match="positive ints; got r=0"):
        L.adapter_params(8, 8, 0)


@pytest.mark.parametrize("rslora", [False, True])
def test_linear_forward_matches_formula(rslora):
    base = nn.Linear(16, 8)
    layer = L.LoRALinear(base, r=4, alpha=8, use_rslora=rslora)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), base(x))  # B = 0: untrained adapter changes nothing
    randomize(layer)
    s = 8 / math.sqrt(4) if rslora else 8 / 4
    assert layer.scaling["default"] == s
    want = x @ base.weight.T + base.bias + s * (x @ layer.A.T) @ layer.B.T
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    assert layer.A.shape == (4, 16) and layer.B.shape == (8, 4)


def test_linear_init_like_peft_and_only_adapters_train():
    k = 64
    layer = L.LoRALinear(nn.Linear(k, 32), r=8, alpha=16)
    bound = 1 / math.sqrt(k)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(k), 1/sqrt(k))
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.8 * bound
    assert torch.count_nonzero(layer.B) == 0
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == [
        "lora_A.default.weight", "lora_B.default.weight"]
    layer(torch.randn(4, k)).pow(2).sum().backward()
    # With B = 0 the first gradient reaches B only: dL/dA = B^T (...) = 0.
    assert torch.count_nonzero(layer.lora_A["default"].weight.grad) == 0
    assert torch.count_nonzero(layer.lora_B["default"].weight.grad) > 0
    assert layer.base_layer.weight.grad is None


def test_dropout_only_in_training():
    layer = L.LoRALinear(nn.Linear(16, 16), r=4, alpha=4, dropout=0.5)
    randomize(layer)
    x = torch.randn(8, 16)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    want = layer.base_layer(x) + (x @ layer.A.T) @ layer.B.T
    torch.testing.assert_close(layer(x), want)


def test_half_precision_base_gets_float32_adapters():
    layer = L.LoRALinear(nn.Linear(16, 8).to(torch.bfloat16), r=2, alpha=2)
    assert layer.A.dtype == torch.float32
    assert layer(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_embedding_forward_matches_formula_and_peft_shapes():
    base = nn.Embedding(10, 6, padding_idx=0)
    layer = L.LoRAEmbedding(base, r=3, alpha=6)
    ids = torch.tensor([[0, 3, 9], [2, 2, 5]])
    assert torch.equal(layer(ids), base(ids))  # A = 0 at the start
    assert layer.A.shape == (3, 10) and layer.B.shape == (6, 3)
    layer(ids).pow(2).sum().backward()  # first gradient: only seen tokens' columns of A
    seen = torch.count_nonzero(layer.lora_embedding_A["default"].grad, dim=0).nonzero()
    assert seen.flatten().tolist() == [2, 3, 5, 9]  # 0 is padding_idx: no gradient
    assert torch.count_nonzero(layer.lora_embedding_B["default"].grad) == 0
    randomize(layer)
    table = base.weight + 2.0 * (layer.B @ layer.A).T
    torch.testing.assert_close(layer(ids), table[ids])
    torch.testing.assert_close(layer.delta_weight(), 2.0 * (layer.B @ layer.A).T)


def test_generic_base_with_in_out_features():
    class Scaled(nn.Module):  # not an nn.Linear: a stand-in for a 4-bit base
        in_features, out_features = 6, 4

        def __init__(self):
            super().__init__()
            self.m = nn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            return 2 * x @ self.m.T

    layer = L.LoRALinear(Scaled(), r=2, alpha=2)
    randomize(layer)
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), 2 * x @ layer.base_layer.m.T + x @ layer.A.T @ layer.B.T)
    with pytest.raises(TypeError, match="no dense float weight.*Override base_weight"):
        layer.merge()
    with pytest.raises(TypeError, match="in_features/out_features"):
        L.LoRALinear(nn.GELU(), r=2, alpha=2)

    class ScaledLoRA(L.LoRALinear):  # the extension point a quantized base overrides
        def base_weight(self):
            return 2 * self.base_layer.m.detach()  # the dense (out, in) map the base applies

        def _write_base_weight(self, new):
            self.base_layer.m.data.copy_(new / 2)

    layer2 = ScaledLoRA(Scaled(), r=2, alpha=2)
    randomize(layer2)
    y = layer2(x)
    layer2.merge()
    torch.testing.assert_close(layer2(x), y)
    layer2.unmerge()
    torch.testing.assert_close(layer2(x), y)


# --------------------------------------------------------------------------- merging


def test_layer_merge_unmerge_round_trip():
    layer = L.LoRALinear(nn.Linear(32, 16), r=4, alpha=8)
    randomize(layer)
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(7, 32)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, w0 + 2.0 * layer.B @ layer.A)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already merged.*unmerge\\(\\) before merging again"):
        layer.merge()
    with pytest.raises(RuntimeError, match="merged.*cannot be switched off"):
        layer.enable_adapters(False)
    layer.unmerge()
    assert (layer.base_layer.weight - w0).abs().max() < 1e-6  # exact up to rounding
    torch.testing.assert_close(layer(x), y)
    with pytest.raises(RuntimeError, match="nothing to unmerge"):
        layer.unmerge()


def test_model_merge_export_and_unload_give_same_logits():
    model = tiny_llama()
    plain = copy.deepcopy(model)
    L.add_lora(model, ALL7 + ["embed_tokens"], r=4, alpha=8)
    randomize(model)
    with torch.no_grad():
        want = model(IDS).logits
        assert not torch.allclose(want, plain(IDS).logits, atol=1e-3)  # the adapter matters
        sd = L.merged_state_dict(model)
        assert not any("lora_" in k or "base_layer" in k for k in sd)
        plain.load_state_dict(sd)  # strict: exactly the base model's keys
        torch.testing.assert_close(plain(IDS).logits, want, rtol=1e-4, atol=1e-5)
        L.merge_lora(model)
        torch.testing.assert_close(model(IDS).logits, want, rtol=1e-4, atol=1e-5)
        L.unmerge_lora(model)
        torch.testing.assert_close(model(IDS).logits, want, rtol=1e-4, atol=1e-5)
        L.unload_lora(model, merge=True)
        assert not list(L.lora_layers(model))
        assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
        torch.testing.assert_close(model(IDS).logits, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- injection


def test_add_lora_on_custom_module_counts_and_freezes():
    model = MLP()
    rep = L.add_lora(model, ["up", "down"], r=2, alpha=4)
    assert rep.layers == ["up", "down"]
    want = L.adapter_params(20, 12, 2) + L.adapter_params(12, 20, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"up.lora_A.default.weight", "up.lora_B.default.weight",
                         "down.lora_A.default.weight", "down.lora_B.default.weight"}
    total = sum(p.numel() for p in MLP().parameters()) + want
    assert (rep.params.trainable, rep.params.total) == (want, total)
    assert str(rep).splitlines()[1] == L.param_summary(model)


def test_suffix_matching_on_llama_and_regex_form():
    model = tiny_llama()
    rep = L.add_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    assert rep.layers == [f"model.layers.{i}.self_attn.{t}"
                          for i in (0, 1) for t in ("q_proj", "v_proj")]
    # k = 32 inputs; q_proj has 32 outputs, v_proj 2 kv heads * 8 = 16 outputs
    assert rep.params.trainable == 2 * (4 * (32 + 32) + 4 * (16 + 32))
    assert L.add_lora(tiny_llama(), "q_proj", r=4, alpha=8).layers == rep.layers[::2]  # one str
    with pytest.raises(ValueError, match=r"\['proj'\] match no module"):  # whole names only
        L.add_lora(tiny_llama(), ["proj"], r=4, alpha=8)
    other = tiny_llama()
    rep2 = L.add_lora(other, re.compile(r"model\.layers\.0\.self_attn\.[qv]_proj"), r=4, alpha=8)
    assert rep2.layers == rep.layers[:2]
    assert rep2.config.target_modules == rep.layers[:2]  # saved as exact names (PEFT matches)


def test_bias_modes():
    model = MLP()
    L.add_lora(model, ["up"], r=2, alpha=2, bias="lora_only")
    biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert biases == {"up.base_layer.bias"}
    model = MLP()
    L.add_lora(model, ["up"], r=2, alpha=2, bias="all")
    biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert biases == {"up.base_layer.bias", "down.bias", "head.bias"}
    with pytest.raises(ValueError, match="bias must be one of"):
        L.add_lora(MLP(), ["up"], r=2, alpha=2, bias="some")


def test_labkit_model():
    model = models.build("tiny")
    ref = copy.deepcopy(model).eval()
    rep = L.add_lora(model, ALL7 + ["embed_tokens"], r=4, alpha=8)
    cfg = model.config
    per_layer = sum(L.adapter_params(d, k, 4) for d, k in [
        (cfg.hidden_size, cfg.hidden_size), (cfg.kv_dim, cfg.hidden_size),
        (cfg.kv_dim, cfg.hidden_size), (cfg.hidden_size, cfg.hidden_size),
        (cfg.intermediate_size, cfg.hidden_size), (cfg.intermediate_size, cfg.hidden_size),
        (cfg.hidden_size, cfg.intermediate_size)])
    embed = L.adapter_params(cfg.vocab_size, cfg.hidden_size, 4)
    assert rep.params.trainable == cfg.n_layers * per_layer + embed
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))
        randomize(model)
        want = model(ids)
        ref.load_state_dict(L.merged_state_dict(model))
        torch.testing.assert_close(ref(ids), want, rtol=1e-4, atol=1e-5)


def test_planned_adapter_params_on_meta_allocates_nothing():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):  # LLaMA-2 7B shapes
        big = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008,
                                           num_hidden_layers=32, num_attention_heads=32,
                                           vocab_size=32000))
    est = L.planned_adapter_params(big, ["q_proj", "v_proj"], r=8)
    assert all(p.device.type == "meta" for p in big.parameters())
    assert est.trainable == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    assert est.base == 6_738_415_616 and est.layers == 64
    assert f"{est.percent:.4f}" == "0.0622"  # the figure PEFT prints for this setup
    # labkit's own registry, and agreement with real injection on a small model
    assert L.planned_adapter_params(models.build("llama-2-7b", device="meta"),
                                    ["q_proj", "v_proj"], 8).trainable == 4_194_304
    small = tiny_llama()
    est = L.planned_adapter_params(small, ALL7, r=4)
    assert est.trainable == L.add_lora(small, ALL7, r=4, alpha=4).params.trainable


# --------------------------------------------------------------------------- adapters


def test_named_adapters_switch_disable_delete():
    layer_in = torch.randn(3, 12)
    model = MLP()
    L.add_lora(model, ["up", "down"], r=2, alpha=2, adapter_name="a")
    L.add_lora(model, ["up"], r=3, alpha=6, adapter_name="b")
    randomize(model)
    up = model.up
    assert up.adapter_names == ["a", "b"] and up.active_adapter == "b"
    assert model.down.active_adapter is None  # "b" does not cover down
    train = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert train == ["up.lora_A.b.weight", "up.lora_B.b.weight"]
    base_out = up.base_layer(layer_in)
    torch.testing.assert_close(up(layer_in), base_out + 2 * layer_in @ up.A.T @ up.B.T)
    L.set_adapter(model, "a")
    assert up.A.shape == (2, 12)
    torch.testing.assert_close(up(layer_in), base_out + layer_in @ up.A.T @ up.B.T)
    with L.adapters_disabled(model):
        assert torch.equal(up(layer_in), base_out)
    assert not torch.equal(up(layer_in), base_out)
    L.delete_adapter(model, "b")
    assert up.adapter_names == ["a"]
    with pytest.raises(KeyError, match="no adapter named 'b'.*has \\['a'\\]"):
        L.set_adapter(model, "b")
    L.merge_lora(model)
    with pytest.raises(RuntimeError, match="merged.*cannot be switched off"):
        L.disable_adapters(model)
    with pytest.raises(RuntimeError, match="merged into their weights; unmerge_lora"):
        L.add_lora(model, ["up"], r=2, alpha=2, adapter_name="c")
    with pytest.raises(RuntimeError, match="'a' is already merged into the model; unmerge_lora"):
        L.merge_lora(model)
    L.unmerge_lora(model)
    with L.adapters_disabled(model):
        with pytest.raises(RuntimeError, match="adapters are disabled; enable_adapters"):
            L.merge_lora(model)


def test_save_load_round_trip_peft_layout(tmp_path):
    model = tiny_llama()
    L.add_lora(model, ["q_proj", "v_proj", "embed_tokens"], r=4, alpha=8, use_rslora=True)
    randomize(model)
    L.save_adapter(model, tmp_path, base_model_name_or_path="tiny-llama", task_type="CAUSAL_LM")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {k: cfg[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora",
                                "lora_dropout", "fan_in_fan_out", "bias",
                                "base_model_name_or_path", "task_type")} == {
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True, "lora_dropout": 0.0,
        "target_modules": ["embed_tokens", "q_proj", "v_proj"], "fan_in_fan_out": False,
        "bias": "none", "base_model_name_or_path": "tiny-llama", "task_type": "CAUSAL_LM"}
    sd = load_file(tmp_path / "adapter_model.safetensors")
    pre = "base_model.model.model."
    assert sd[pre + "layers.1.self_attn.v_proj.lora_A.weight"].shape == (4, 32)
    assert sd[pre + "layers.1.self_attn.v_proj.lora_B.weight"].shape == (16, 4)
    assert sd[pre + "embed_tokens.lora_embedding_A"].shape == (4, 64)
    assert sd[pre + "embed_tokens.lora_embedding_B"].shape == (32, 4)
    assert len(sd) == 2 + 2 * 2 * 2
    fresh = tiny_llama()
    rep = L.load_adapter(fresh, tmp_path)
    assert rep.params.trainable == 0  # loaded for inference, as PEFT does by default
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits)
    again = tiny_llama()
    L.load_adapter(again, tmp_path, is_trainable=True)
    assert L.model_params(again).trainable == L.model_params(model).trainable


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, msg", [
    (dict(r=0, alpha=8), "rank r must be a positive int.*r=0"),
    (dict(r=-2, alpha=8), "rank r must be a positive int.*r=-2"),
    (dict(r=2.5, alpha=8), "rank r must be a positive int.*r=2.5"),
    (dict(r=4, alpha=0), "alpha must be a positive number.*alpha=0"),
    (dict(r=4, alpha=-1.0), "alpha must be a positive number"),
    (dict(r=4, alpha=8, dropout=1.0), r"dropout must lie in \[0, 1\).*dropout=1.0"),
    (dict(r=4, alpha=8, dropout=-0.1), r"dropout must lie in \[0, 1\)"),
])
def test_bad_hyperparameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        L.LoRALinear(nn.Linear(4, 4), **kw)
    with pytest.raises(ValueError, match=msg):
        L.add_lora(MLP(), ["up"], **kw)


def test_bad_targets_name_what_exists():
    with pytest.raises(ValueError, match=r"\['qproj'\] match no module; layers LoRA can wrap "
                                         r"here, by name: down_proj, embed_tokens, gate_proj"):
        L.add_lora(tiny_llama(), ["q_proj", "qproj"], r=2, alpha=2)
    with pytest.raises(ValueError, match="cannot wrap.*model.layers.0.mlp \\(LlamaMLP\\)"):
        L.add_lora(tiny_llama(), ["mlp"], r=2, alpha=2)
    with pytest.raises(ValueError, match="pattern 'nothing.*' matches no module"):
        L.add_lora(MLP(), re.compile("nothing.*"), r=2, alpha=2)
    with pytest.raises(ValueError, match="non-empty list of module-name suffixes"):
        L.add_lora(MLP(), [], r=2, alpha=2)


def test_embedding_takes_no_dropout():
    with pytest.raises(ValueError, match="does not apply to an embedding.*use dropout=0.0"):
        L.LoRAEmbedding(nn.Embedding(5, 4), r=2, alpha=2, dropout=0.1)
    model = MLP()
    rep = L.add_lora(model, ["emb", "up"], r=2, alpha=2, dropout=0.1)
    assert isinstance(model.up.lora_dropout["default"], nn.Dropout)
    assert "dropout is not applied to embedding layers" in str(rep)


def test_injecting_twice_is_an_error():
    model = MLP()
    L.add_lora(model, ["up"], r=2, alpha=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter named 'default'"):
        L.add_lora(model, ["up"], r=2, alpha=2)
    model._lora_configs.clear()  # even past the model-level record, the layer refuses
    with pytest.raises(ValueError, match=r"layers \['up'\] already have a LoRA adapter"):
        L.add_lora(model, ["up", "down"], r=2, alpha=2)
    assert isinstance(model.down, nn.Linear)  # a failed call changed nothing
    with pytest.raises(ValueError, match="already has a LoRA adapter named 'default'"):
        model.up.add_adapter("default", 2, 2)
    with pytest.raises(TypeError, match="already a LoRA layer"):
        L.LoRALinear(model.up, r=2, alpha=2)


def test_loading_adapter_that_does_not_fit(tmp_path):
    model = tiny_llama()
    L.add_lora(model, ["q_proj"], r=4, alpha=8)
    L.save_adapter(model, tmp_path / "a")
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2))
    with pytest.raises(ValueError, match="shapes do not fit.*file \\(4, 32\\), model \\(4, 48\\)"):
        L.load_adapter(wider, tmp_path / "a")
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no module.*down, emb, head, up"):
        L.load_adapter(MLP(), tmp_path / "a")
    other = tiny_llama()
    L.add_lora(other, ["q_proj"], r=4, alpha=16)
    with pytest.raises(ValueError, match="disagree.*'lora_alpha': \\(16, 8\\)"):
        L.load_adapter(other, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["use_dora"] = True  # DoRA is implemented now: a DoRA config without magnitudes
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no tensors for .*lora_magnitude_vector"):
        L.load_adapter(tiny_llama(), tmp_path / "a")
    cfg["use_dora"], cfg["lora_bias"] = False, True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="options labkit does not implement: {'lora_bias': True}"):
        L.load_adapter(tiny_llama(), tmp_path / "a")
    cfg["lora_bias"], cfg["init_lora_weights"] = False, "olora"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="init_lora_weights='olora' is a PEFT initialisation"):
        L.load_adapter(tiny_llama(), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        L.load_adapter(tiny_llama(), tmp_path / "missing")


def test_param_table_and_summary():
    model = tiny_llama()
    L.add_lora(model, ["q_proj"], r=4, alpha=8)
    rows = {r.module: r for r in L.param_rows(model)}
    q = rows["model.layers.*.self_attn.q_proj"]
    assert (q.total, q.trainable, q.frozen) == (2 * (32 * 32 + 4 * 64), 2 * 4 * 64, 2 * 32 * 32)
    assert sum(r.total for r in rows.values()) == sum(p.numel() for p in model.parameters())
    base = sum(p.numel() for p in tiny_llama().parameters())
    assert base == 19_616
    table = L.param_table(model)
    assert table.splitlines()[-1].split() == ["total", "20,128", "512", "19,616"]
    assert L.param_summary(model) == (  # 100 * 512 / 20,128 = 2.5437 %
        "trainable params: 512 || all params: 20,128 || trainable%: 2.5437")
    assert [r.module for r in L.param_rows(model, depth=1)] == ["model", "lm_head"]


# --------------------------------------------------------------------------- counts, renames


def test_config_params_is_the_published_size_without_allocating():
    assert L.config_params("llama-2-7b") == 6_738_415_616  # Meta's published count
    cfg = models.get_config("llama-2-7b")
    assert L.config_params(cfg) == L.model_params(models.build(cfg, device="meta")).total


def test_counts_import_without_torch():
    code = ("import sys; from labkit.lora import counts; "
            "print(counts.adapter_params(1024, 1024, 8), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["16384", "False"]


def test_old_count_names_warn_and_give_the_new_results():
    model = MLP()
    L.add_lora(model, ["up", "down"], r=2, alpha=4)
    renamed = {"lora_param_count": ("adapter_params", (24, 40, 3)),
               "count_params": ("model_params", (model,)),
               "count_lora_params": ("planned_adapter_params", (MLP(), ["up", "down"], 2))}
    for old, (new, args) in renamed.items():
        with pytest.warns(LabkitDeprecationWarning, match=rf"lora\.{old} .*lora\.{new}\b"):
            fn = getattr(L, old)
        assert fn(*args) == getattr(L, new)(*args)


def test_labkit_adapters_names_warn_and_are_labkit_lora_names():
    for name in ("save_adapter", "load_adapter", "read_adapter_config", "adapter_state_dict",
                 "WEIGHTS_NAME", "CONFIG_NAME"):
        with pytest.warns(LabkitDeprecationWarning, match=rf"use labkit\.lora\.{name} instead"):
            obj = getattr(adapters, name)
        assert obj is getattr(L, name)
