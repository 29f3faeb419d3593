"""labkit LoRA against PEFT on the same tiny LlamaForCausalLM: adapter files move both ways
with the same logits, and the parameter accounting is PEFT's, number for number.

Tolerance: both sides run the same float32 maths on the same weights, in a different order
of operations (PEFT computes in its own layer code), so logits agree to ~1e-6; we allow
rtol=1e-5, atol=1e-5. Random adapter values make the adapters move the logits by ~1e-1, so
a wrong key, scaling or transpose fails by orders of magnitude.
"""

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from labkit import _deps  # noqa: E402
from labkit import lora as L  # noqa: E402

_deps.import_bnb()  # peft imports bitsandbytes; import it quietly first
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IDS = torch.tensor([[1, 5, 9, 3, 7, 2, 11], [4, 4, 8, 0, 1, 6, 63]])
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)

# Library chatter, not ours: transformers' deprecation note inside peft, and peft's note that
# it saves the embedding table along with an embedding adapter.
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning"),
              pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")]


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def fill_random(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("targets, rslora", [(ALL7 + ["embed_tokens"], False),
                                              (["q_proj", "v_proj"], True)])
def test_peft_adapter_loads_in_labkit(base, tmp_path, targets, rslora):
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, use_rslora=rslora, task_type="CAUSAL_LM"))
    fill_random([p for n, p in pm.named_parameters() if "lora_" in n], seed=3)
    want = logits(pm)
    assert not torch.allclose(want, logits(base), atol=1e-2)  # the adapter changes the output
    pm.save_pretrained(tmp_path)

    mine = copy.deepcopy(base)
    rep = L.load_adapter(mine, tmp_path)
    assert len(rep.layers) == len([m for m in pm.modules() if hasattr(m, "lora_A")])
    torch.testing.assert_close(logits(mine), want, **TOL)


@pytest.mark.parametrize("targets", [ALL7 + ["embed_tokens"],
                                     __import__("re").compile(r".*\.1\.self_attn\.[qv]_proj")])
def test_labkit_adapter_loads_in_peft(base, tmp_path, targets):
    mine = copy.deepcopy(base)
    L.add_lora(mine, targets, r=4, alpha=16, dropout=0.1)
    fill_random(L.get_adapter_params(mine).values(), seed=4)
    mine.eval()
    want = logits(mine)
    assert not torch.allclose(want, logits(base), atol=1e-2)
    L.save_adapter(mine, tmp_path, task_type="CAUSAL_LM")

    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert pm.peft_config["default"].lora_alpha == 16
    torch.testing.assert_close(logits(pm), want, **TOL)


def test_trained_biases_travel_both_ways(tmp_path):
    torch.manual_seed(0)
    biased = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)).eval()
    for bias, targets in [("lora_only", ["q_proj", "up_proj"]), ("all", ["v_proj"])]:
        mine = copy.deepcopy(biased)
        L.add_lora(mine, targets, r=2, alpha=4, bias=bias)
        fill_random([p for p in mine.parameters() if p.requires_grad], seed=6)  # incl. biases
        L.save_adapter(mine, tmp_path / bias)
        pm = PeftModel.from_pretrained(copy.deepcopy(biased), tmp_path / bias).eval()
        torch.testing.assert_close(logits(pm), logits(mine), **TOL)
        pm2 = get_peft_model(copy.deepcopy(biased), LoraConfig(r=2, lora_alpha=4, bias=bias,
                                                               target_modules=targets))
        fill_random([p for p in pm2.parameters() if p.requires_grad], seed=7)
        pm2.save_pretrained(tmp_path / f"peft-{bias}")
        back = copy.deepcopy(biased)
        L.load_adapter(back, tmp_path / f"peft-{bias}")
        torch.testing.assert_close(logits(back), logits(pm2.eval()), **TOL)
        assert not torch.allclose(logits(back), logits(biased), atol=1e-2)


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2,
                                      n_head=4)).eval()
    ids = IDS[:, :6]
    mine = copy.deepcopy(gpt2)
    L.add_lora(mine, ["c_attn", "c_proj"], r=4, alpha=8)
    fill_random(L.get_adapter_params(mine).values(), seed=8)
    with torch.no_grad():
        want = mine(ids).logits
        assert not torch.allclose(want, gpt2(ids).logits, atol=1e-2)
    L.save_adapter(mine, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["fan_in_fan_out"]
    pm = PeftModel.from_pretrained(copy.deepcopy(gpt2), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(ids).logits, want, **TOL)
        plain = copy.deepcopy(gpt2)
        plain.load_state_dict(L.merged_state_dict(mine))  # weights stay (in, out) like Conv1D
        torch.testing.assert_close(plain(ids).logits, want, **TOL)
        L.merge_lora(mine)
        torch.testing.assert_close(mine(ids).logits, want, **TOL)
        L.unmerge_lora(mine)
        torch.testing.assert_close(mine(ids).logits, want, **TOL)
    pm.save_pretrained(tmp_path / "peft")
    back = copy.deepcopy(gpt2)
    L.load_adapter(back, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, want, **TOL)
    with pytest.raises(ValueError, match="targets mix GPT-2 Conv1D layers with other layers"):
        L.add_lora(copy.deepcopy(gpt2), ["c_attn", "lm_head"], r=2, alpha=2)


def test_param_counts_equal_peft(base):
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=ALL7 + ["embed_tokens"])
    pm = get_peft_model(copy.deepcopy(base), cfg)
    mine = copy.deepcopy(base)
    rep = L.add_lora(mine, ALL7 + ["embed_tokens"], r=8, alpha=16)
    assert (rep.params.trainable, rep.params.total) == pm.get_nb_trainable_parameters()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pm.print_trainable_parameters()
    assert out.getvalue().strip() == L.param_summary(mine)
    est = L.planned_adapter_params(copy.deepcopy(base).to("meta"), ALL7 + ["embed_tokens"], r=8)
    assert (est.trainable, est.total) == pm.get_nb_trainable_parameters()


def test_counts_on_a_4bit_base_equal_peft():
    """bitsandbytes packs two 4-bit weights per byte; both libraries count weights, not bytes."""
    bnb = _deps.import_bnb()

    def model():
        torch.manual_seed(0)
        q = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32)
        q.weight = bnb.nn.Params4bit(torch.randn(32, 64) * 0.1, requires_grad=False,
                                     quant_type="nf4")
        return torch.nn.Sequential(q.to("cpu"))  # quantizes: weight becomes (1024, 1) uint8

    mine = model()
    assert mine[0].weight.numel() == 1024
    rep = L.add_lora(mine, ["0"], r=4, alpha=8)
    assert (rep.params.trainable, rep.params.total) == (4 * (64 + 32), 64 * 32 + 4 * (64 + 32))
    pm = get_peft_model(model(), LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    assert (rep.params.trainable, rep.params.total) == pm.get_nb_trainable_parameters()
    assert mine(torch.randn(3, 64)).shape == (3, 32) and mine[0].A.dtype == torch.float32
    with pytest.raises(TypeError, match="cannot merge into a Linear4bit base"):
        L.merge_lora(mine)


def test_merged_weights_equal_peft_merge_and_unload(base):
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "down_proj"]))
    fill_random([p for n, p in pm.named_parameters() if "lora_" in n], seed=5)
    mine = copy.deepcopy(base)
    L.add_lora(mine, ["q_proj", "down_proj"], r=4, alpha=8)
    theirs = {k.removeprefix("base_model.model."): v for k, v in pm.state_dict().items()}
    with torch.no_grad():  # same adapter values, by key
        for k, p in L.get_adapter_params(mine).items():
            p.copy_(theirs[k])
    merged = pm.merge_and_unload().state_dict()
    ours = L.merged_state_dict(mine)
    assert ours.keys() == merged.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], merged[k], **TOL)


def test_benchmark_quick_smoke():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lora_vs_peft.py"),
                           "--quick"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train step" in proc.stdout and "trainable params" in proc.stdout
    assert "counts equal: True" in proc.stdout
