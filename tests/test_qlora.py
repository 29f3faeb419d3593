"""QLoRA: the two 4-bit back ends agree, the base never trains, the byte accounting is exact,
merging shows its rounding error, adapters travel in PEFT's format, the AVX512-BF16 trap is
defused, and bad input gets clear errors.

Tolerances: labkit's quantizer is bit-exact with bitsandbytes' CPU path, and both back ends
dequantize and then call ``F.linear`` on the same float32 numbers, so float32 outputs and
gradients agree exactly (``atol=0``) on the CPU. Against PEFT (its own layer code, same maths
in another order) logits agree to ~1e-6; we allow 1e-5.
"""

import copy
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from labkit import _api, _deps, models, qlora, train  # noqa: E402
from labkit import lora as L  # noqa: E402
from labkit import quant as Q  # noqa: E402

bnb = _deps.import_bnb()  # peft imports bitsandbytes; import it quietly first

ROOT = Path(__file__).resolve().parent.parent
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-5, atol=1e-5)
HAS_AVX512BF16 = bool(bnb.functional.has_avx512bf16())

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),
              # the negative control backpropagates through bnb's inference kernel on purpose
              pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")]


@pytest.fixture(scope="module")
def pretrained():
    return models.load_pretrained().model


@pytest.fixture
def ids():
    return torch.randint(3, 120, (3, 12), generator=torch.Generator().manual_seed(0))


def randomize_adapters(model, seed=1, std=0.05):
    """B starts at zero; give the adapters values so that they change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in L.get_adapter_params(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def qmodel(base, backend="bnb", targets=ALL7, r=4, **kw):
    m = copy.deepcopy(base)
    rep = qlora.prepare_qlora(m, targets, r=r, alpha=2 * r, backend=backend, **kw)
    randomize_adapters(m)
    return m, rep


def output_and_grads(model, ids):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids)
    out.float().square().mean().backward()
    grads = {k: p.grad for k, p in L.get_adapter_params(model).items()}
    return out.detach(), grads


# --------------------------------------------------------------------------- back ends


@pytest.mark.parametrize("bias", [False, True])
def test_one_layer_backends_agree_with_an_independent_computation(bias):
    torch.manual_seed(0)
    lin = nn.Linear(128, 96, bias=bias)
    layers = {be: qlora.quantize_linear(lin, backend=be) for be in ("bnb", "labkit")}
    assert qlora._is_bnb_4bit(layers["bnb"]) and isinstance(layers["labkit"], qlora.Linear4bit)
    packed, state = Q.quantize_4bit(lin.weight.detach(), 64, "nf4", double_quant=True)
    w = Q.dequantize_4bit(packed, state)  # the reference: dequantize, then a plain linear
    assert not torch.equal(w, lin.weight)  # it is quantized
    x0 = torch.randn(2, 5, 128)
    g = torch.randn(2, 5, 96)
    want = F.linear(x0, w, lin.bias)
    for be, layer in layers.items():
        x = x0.clone().requires_grad_(True)
        y = layer(x)
        y.backward(g)
        torch.testing.assert_close(y, want, **EXACT, msg=be)
        torch.testing.assert_close(x.grad, g @ w, **EXACT, msg=be)  # dL/dx = dL/dy W
        assert all(p.grad is None for p in layer.parameters()), be  # nothing into the base
        torch.testing.assert_close(qlora.dequantize_weight(layer), w, **EXACT)


def test_backends_agree_in_bf16_compute():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(4, 128)
    ys = {}
    for be in ("bnb", "labkit"):
        layer = qlora.quantize_linear(lin, backend=be, compute_dtype=torch.bfloat16)
        ys[be] = layer(x)
        assert ys[be].dtype == torch.float32  # returned in the input's dtype
    # both round x and W to bf16 and matmul; kernels may accumulate in different orders
    torch.testing.assert_close(ys["bnb"], ys["labkit"], rtol=2e-2, atol=2e-2)
    ref = F.linear(x.bfloat16(), qlora.dequantize_weight(layer).bfloat16(), lin.bias.bfloat16())
    torch.testing.assert_close(ys["labkit"], ref.float(), rtol=2e-2, atol=2e-2)


def test_model_backends_agree_outputs_and_adapter_grads(pretrained, ids):
    results = {}
    for be in ("bnb", "labkit"):
        m, _ = qmodel(pretrained, be)
        results[be] = output_and_grads(m, ids)
    (yb, gb), (yl, gl) = results["bnb"], results["labkit"]
    torch.testing.assert_close(yb, yl, **EXACT)
    assert gb.keys() == gl.keys() and len(gb) == 2 * 14
    for k in gb:
        torch.testing.assert_close(gb[k], gl[k], **EXACT)


def test_only_adapters_train_and_the_base_gets_no_grad(pretrained, ids):
    for be in ("bnb", "labkit"):
        m, _ = qmodel(pretrained, be)
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert trainable == set(L.get_adapter_params(m)) and trainable
        assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
        output_and_grads(m, ids)
        assert all(p.grad is None for n, p in m.named_parameters() if n not in trainable)
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in m.named_parameters() if n in trainable)
        # the base stays bit-identical through an optimizer step
        before = {k: v.clone() for k, v in m.state_dict().items() if ".lora_" not in k}
        opt = train.make_optimizer(m, "adamw", lr=1e-2)
        opt.step()
        after = m.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_trainable_count_independent(pretrained):
    m, rep = qmodel(pretrained, "labkit")
    cfg = pretrained.config
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim
    shapes = [(d, d), (kv, d), (kv, d), (d, d), (f, d), (f, d), (d, f)]  # (out, in)
    want = cfg.n_layers * sum(4 * (o + i) for o, i in shapes)
    assert rep.lora.params.trainable == want
    assert rep.lora.params.total == sum(p.numel() for p in pretrained.parameters()) + want


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("double_quant", [True, False])
def test_report_bytes_match_an_independent_computation(pretrained, double_quant):
    for be in ("bnb", "labkit"):
        m, rep = qmodel(pretrained, be, double_quant=double_quant)
        q = rep.quant
        shapes = {n: mod.weight.shape for n, mod in pretrained.named_modules()
                  if n.rsplit(".", 1)[-1] in ALL7}
        assert sorted(q.layers) == sorted(shapes)
        want = sum(Q.quantized_nbytes(s.numel(), 64, double_quant) for s in shapes.values())
        assert q.target_bytes_after == want
        numel = sum(s.numel() for s in shapes.values())
        assert q.layer_numel == numel and q.target_bytes_before == 4 * numel
        total = sum(p.numel() for p in pretrained.parameters())
        assert q.base_bytes_before == 4 * total
        assert q.base_bytes_after == want + 4 * (total - numel)
        assert qlora.base_weight_bytes(m) == q.base_bytes_after
        assert {k.kind for k in q.kept} == {"embedding", "norm", "head"}
        assert sum(k.numel for k in q.kept) == total - numel
        assert "lm_head" in [k.name for k in q.kept if k.kind == "head"]
        assert q.bits_per_weight == pytest.approx(8 * want / numel)
        text = str(rep)
        assert "kept embedding" in text and "bits per weight" in text
    # small layers pay the per-layer constants; the large-layer limit is 4.127
    assert Q.bits_per_weight("nf4", 64, True) == pytest.approx(4.127, abs=1e-3)


# --------------------------------------------------------------------------- merging


@pytest.mark.parametrize("backend", ["bnb", "labkit"])
def test_merge_requantizes_and_measures_the_rounding(pretrained, ids, backend):
    m, _ = qmodel(pretrained, backend)
    m.eval()
    with torch.no_grad():
        want = m(ids)
    name = "layers.0.self_attn.q_proj"
    lay = m.get_submodule(name)
    exact = qlora.dequantize_weight(lay) + lay.delta_weight()
    packed, state = Q.quantize_4bit(exact, 64, "nf4", double_quant=True)
    requantized = Q.dequantize_4bit(packed, state)
    independent = requantized - exact

    rep = qlora.merge_qlora(m)
    assert len(rep.rows) == 14 and "rms rounding" in str(rep)
    row = next(r for r in rep.rows if r.layer == name)
    assert row.rms_update == pytest.approx(lay.delta_weight().pow(2).mean().sqrt().item())
    assert row.rms_rounding == pytest.approx(independent.pow(2).mean().sqrt().item(), rel=1e-5)
    assert row.rms_rounding > 0 and row.ratio > 0
    assert qlora.is_4bit(lay.base_layer)  # still 4-bit after merging, holding exactly
    torch.testing.assert_close(qlora.dequantize_weight(lay), requantized, **EXACT)
    with torch.no_grad():
        merged = m(ids)
    assert not torch.equal(merged, want)  # re-quantizing moved the outputs
    with pytest.raises(RuntimeError, match="merged already"):
        qlora.merge_qlora(m)
    qlora.unmerge_qlora(m)
    with torch.no_grad():
        torch.testing.assert_close(m(ids), want, **EXACT)  # the saved 4-bit weight is back


def test_merged_16bit_export_loads_into_the_plain_model(pretrained, ids, tmp_path):
    m, _ = qmodel(pretrained, "bnb")
    m.eval()
    with torch.no_grad():
        want = m(ids)
    state = qlora.merged_16bit_state_dict(m, dtype=torch.float32)
    plain = models.build(pretrained.config)
    assert state.keys() == plain.state_dict().keys()
    plain.load_state_dict(state)
    with torch.no_grad():
        # the same sums in another order (W x + s B A x against (W + s B A) x)
        torch.testing.assert_close(plain.eval()(ids), want, rtol=1e-4, atol=1e-4)
    nbytes = qlora.save_merged_16bit(m, tmp_path / "merged.safetensors")
    from safetensors.torch import load_file

    bf16 = load_file(str(tmp_path / "merged.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in bf16.values() if t.is_floating_point())
    assert nbytes > 2 * sum(p.numel() for p in pretrained.parameters())
    qlora.merge_qlora(m)  # exporting a merged model gives the unrounded sum too
    torch.testing.assert_close(qlora.merged_16bit_state_dict(m, torch.float32)[
        "layers.1.mlp.down_proj.weight"], state["layers.1.mlp.down_proj.weight"], **EXACT)


# --------------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def hf_base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def test_adapter_round_trip_labkit_and_peft_bnb(hf_base, tmp_path):
    from peft import PeftModel

    x = torch.tensor([[1, 5, 9, 3, 7, 2, 11], [4, 4, 8, 0, 1, 6, 63]])
    mine = copy.deepcopy(hf_base)
    qlora.prepare_qlora(mine, ALL7, r=4, alpha=8, backend="bnb")
    randomize_adapters(mine, seed=3)
    mine.eval()
    with torch.no_grad():
        want = mine(x).logits
    L.save_adapter(mine, tmp_path, task_type="CAUSAL_LM")
    assert (tmp_path / "adapter_model.safetensors").is_file()

    again = copy.deepcopy(hf_base)  # labkit: a fresh QLoRA model, then the file
    qlora.prepare_qlora(again, ALL7, r=4, alpha=8, backend="labkit")
    L.load_adapter(again, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x).logits, want, **EXACT)

    theirs = copy.deepcopy(hf_base)  # PEFT on a bitsandbytes 4-bit model of the same base
    qlora.quantize_model(theirs, ALL7, backend="bnb")
    theirs.is_loaded_in_4bit = True  # what transformers sets; PEFT then uses its bnb layers
    pm = PeftModel.from_pretrained(theirs, tmp_path).eval()
    assert type(pm.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
                ).__module__.endswith("lora.bnb")
    with torch.no_grad():
        torch.testing.assert_close(pm(x).logits, want, **TOL)


# --------------------------------------------------------------------------- the trap


def test_evaluate_then_train_gives_the_fresh_gradients(pretrained, ids):
    m, _ = qmodel(pretrained, "bnb")
    fresh = copy.deepcopy(m)
    assert all(not mod.support_avx512bf16_for_cpu for mod in m.modules()
               if qlora._is_bnb_4bit(mod))
    train.evaluate(m, "shift", n=4)  # eval() mode, no grad: where bnb would repack
    y0, g0 = output_and_grads(fresh, ids)
    y1, g1 = output_and_grads(m, ids)
    torch.testing.assert_close(y1, y0, **EXACT)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], **EXACT)


@pytest.mark.skipif(not HAS_AVX512BF16, reason="this CPU lacks AVX512-BF16, so bitsandbytes "
                    "never takes its CPU inference repack path: nothing to show")
def test_negative_control_switch_on_breaks_gradients(pretrained, ids):
    m, _ = qmodel(pretrained, "bnb")
    fresh = copy.deepcopy(m)
    for mod in m.modules():  # what a plain bitsandbytes model does on this CPU
        if qlora._is_bnb_4bit(mod):
            mod.support_avx512bf16_for_cpu = True
    m.eval()
    with torch.no_grad():
        m(ids)
    y0, g0 = output_and_grads(fresh, ids)
    y1, g1 = output_and_grads(m, ids)
    assert not torch.allclose(y1, y0, atol=1e-3)  # outputs shift (bf16 inference kernel)
    worst = max((g1[k] - g0[k]).abs().max().item() / g0[k].abs().max().item() for k in g0)
    assert worst > 0.1  # gradients through the repacked base are wrong, with no error

    lin = nn.Linear(64, 48)  # out_features not a multiple of 32: the repack asserts
    broken = qlora.quantize_linear(lin, backend="bnb")
    broken.support_avx512bf16_for_cpu = True
    broken.eval()
    with pytest.raises(AssertionError), torch.no_grad():
        broken(torch.randn(2, 64))
    ok = qlora.quantize_linear(lin, backend="bnb").eval()  # labkit's switch: off
    with torch.no_grad():
        assert ok(torch.randn(2, 64)).shape == (2, 48)


def test_disable_cpu_inference_repack_on_a_peft_model(hf_base):
    from peft import LoraConfig, get_peft_model

    theirs = copy.deepcopy(hf_base)
    qlora.quantize_model(theirs, ALL7, backend="bnb")
    for mod in theirs.modules():
        if qlora._is_bnb_4bit(mod):
            mod.support_avx512bf16_for_cpu = True
    pm = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=ALL7))
    assert qlora.disable_cpu_inference_repack(pm) == 14
    assert not any(getattr(mod, "support_avx512bf16_for_cpu", False) for mod in pm.modules())


# --------------------------------------------------------------------------- training bits


def test_gradient_checkpointing_gives_the_same_gradients(pretrained, ids):
    a, _ = qmodel(pretrained, "labkit")
    b, rep = qmodel(pretrained, "labkit", gradient_checkpointing=True)
    assert rep.gradient_checkpointing and "checkpointing: on" in str(rep)
    ya, ga = output_and_grads(a, ids)
    yb, gb = output_and_grads(b, ids)
    torch.testing.assert_close(yb, ya, **EXACT)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-6, atol=1e-7)
    assert b.gradient_checkpointing is True  # the model's one switch


def test_checkpointing_switch_wraps_a_foreign_model_and_toggles():
    """A model that is not labkit's LlamaLM gets each block wrapped; the switch toggles it,
    and the gradients stay the same."""
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
                                     for _ in range(3))
    x = torch.randn(4, 8, requires_grad=True)

    def grads():
        x.grad = None
        y = x
        for layer in net.layers:
            y = layer(y)
        y.square().sum().backward()
        return x.grad.clone()

    plain = grads()
    assert models.set_gradient_checkpointing(net) == 3
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        saved: list = []
        torch.testing.assert_close(grads(), plain)
    on = len(saved)
    assert models.set_gradient_checkpointing(net, enabled=False) == 0
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        saved = []
        torch.testing.assert_close(grads(), plain)
    assert on < len(saved)  # checkpointed blocks saved only their inputs
    with pytest.raises(ValueError, match="no nn.ModuleList called 'blocks'"):
        models.set_gradient_checkpointing(net, blocks="blocks")


def test_bnb_optimizers_fall_back_on_the_cpu_saying_so_once(pretrained):
    m, _ = qmodel(pretrained, "labkit")
    _api._said.discard("train:cpu-fallback:paged_adamw")
    with pytest.warns(UserWarning, match="'paged_adamw' needs a CUDA GPU"):
        opt = train.make_optimizer(m, "paged_adamw", lr=1e-3)
    assert type(opt) is torch.optim.AdamW
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.make_optimizer(m, "paged_adamw", lr=1e-3)  # second time: silent
    assert "adamw8bit" in train.OPTIMIZERS


def test_a_short_qlora_training_run_lowers_the_loss(pretrained):
    m, _ = qmodel(pretrained, "bnb")
    with torch.no_grad():
        for p in L.get_adapter_params(m).values():
            if p.shape[1] == 4:  # B back to zero: start from the pretrained model
                p.zero_()
    h = train.train(m, "shift", steps=8, lr=1e-2, batch_size=16, eval_n=4, progress=False)
    assert h.loss[-1] < h.loss[0]


# --------------------------------------------------------------------------- bad input


def test_quantizing_twice_is_refused(pretrained):
    m, _ = qmodel(pretrained, "labkit")
    with pytest.raises(ValueError, match="already quantized to 4 bits"):
        qlora.prepare_qlora(m, ["q_proj"], r=2, alpha=2, adapter_name="second")
    with pytest.raises(ValueError, match="already quantized to 4 bits"):
        qlora.quantize_linear(m.get_submodule("layers.0.self_attn.q_proj"))
    with pytest.raises(ValueError, match="already quantized to 4 bits"):
        qlora.quantize_linear(m.get_submodule("layers.0.self_attn.q_proj").base_layer)


def test_compute_dtypes_the_device_cannot_do(monkeypatch):
    with pytest.raises(ValueError, match="float16 compute is not supported on the CPU"):
        qlora.resolve_compute_dtype(torch.float16, "cpu")
    with pytest.raises(ValueError, match="compute_dtype must be"):
        qlora.resolve_compute_dtype(torch.int8, "cpu")
    with pytest.raises(ValueError, match="float16 compute is not supported on the CPU"):
        qlora.quantize_linear(nn.Linear(64, 64), compute_dtype=torch.float16)
    assert qlora.resolve_compute_dtype(None, "cpu") == torch.float32
    assert qlora.resolve_compute_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    # a GPU without bf16 (e.g. a T4): fall back to fp16 with a warning (no GPU needed to test)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    _api._said.discard("qlora:fp16")
    with pytest.warns(qlora.QLoRAWarning, match="no bfloat16; computing the 4-bit matmuls in "
                      "float16"):
        assert qlora.resolve_compute_dtype(torch.bfloat16, "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert qlora.resolve_compute_dtype(None, "cuda") == torch.bfloat16


def test_targets_that_match_nothing_or_the_wrong_layers(pretrained):
    m = copy.deepcopy(pretrained)
    with pytest.raises(ValueError, match=r"match no module; .*q_proj"):
        qlora.prepare_qlora(m, ["query"], r=2, alpha=2)
    with pytest.raises(ValueError, match="matches no module"):
        qlora.quantize_model(m, re.compile(r".*\.attention\..*"))
    with pytest.raises(ValueError, match="not plain nn.Linear.*embed_tokens"):
        qlora.quantize_model(m, ["embed_tokens"])
    with pytest.raises(ValueError, match="LoRA rank r must be a positive int"):
        qlora.prepare_qlora(m, ["q_proj"], r=0, alpha=2)
    assert not any(qlora.is_4bit(mod) for mod in m.modules())  # nothing changed on failure


def test_training_a_4bit_weight_directly_is_refused(pretrained):
    m, _ = qmodel(pretrained, "labkit")
    w = m.get_submodule("layers.0.self_attn.q_proj").base_layer.weight
    with pytest.raises(RuntimeError, match="a 4-bit weight cannot train"):
        w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="a 4-bit weight cannot train"):
        m.requires_grad_(True)  # full fine-tuning of a QLoRA model
    with pytest.raises(RuntimeError, match="a 4-bit weight cannot train"):
        qlora.Params4bit(torch.zeros(4, 1, dtype=torch.uint8), requires_grad=True)
    b, _ = qmodel(pretrained, "bnb")  # bitsandbytes' own parameter: torch refuses
    with pytest.raises(RuntimeError, match="floating point"):
        b.get_submodule("layers.0.self_attn.q_proj").base_layer.weight.requires_grad_(True)


def test_backend_choice_and_the_auto_fallback(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        qlora.resolve_backend("cuda")
    assert qlora.resolve_backend("auto", "cpu") == "bnb"
    assert qlora.resolve_backend("labkit", "cpu") == "labkit"

    def broken():
        raise ImportError("no native library")

    monkeypatch.setattr(_deps, "import_bnb", broken)
    _api._said.discard("qlora:backend-import")
    with pytest.warns(qlora.QLoRAWarning, match="bitsandbytes is unavailable"):
        assert qlora.resolve_backend("auto", "cpu") == "labkit"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        assert qlora.resolve_backend("auto", "cpu") == "labkit"
    with pytest.raises(ImportError, match="no native library"):
        qlora.resolve_backend("bnb", "cpu")
    with pytest.raises(ValueError, match="'nf4' or 'fp4'"):
        monkeypatch.undo()
        qlora.quantize_linear(nn.Linear(64, 64), backend="bnb", quant_type="int4")


# --------------------------------------------------------------------------- scripts


# gpu_check's standard-stack section (benchmarks/gpu_standard_stack.py): its table's header
# and rows, and its verdict that transformers + PEFT and labkit gave the same losses
STANDARD_STACK = ["\ncontender             step ms  / PEFT peak MiB est. MiB first loss last loss "
                  "max|dloss|\n", "\ntransformers + PEFT ", "\nlabkit ",
                  "\nstandard stack vs labkit: ok (every loss finite; steps 1-2 equal within "
                  "0.0001 x the largest PEFT loss"]


@pytest.mark.parametrize("script, args, expect", [
    ("qlora_vs_peft.py", ["--quick"], ["base-weight bytes equal: True"]),
    ("gpu_check.py", ["--dry-run"],
     STANDARD_STACK + ["\nLoftQ vs PEFT: ok (Q values differing at most 0.0%", "dry run OK"]),
])
def test_benchmark_smoke(script, args, expect):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for line in expect:
        assert line in proc.stdout, (line, proc.stdout[-2000:])
