"""labkit.models: published parameter counts, shapes, causality, GQA, RMSNorm, rotary,
and the shipped checkpoint's integrity checks."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from labkit import data, lora, models
from labkit.env import seed_everything
from labkit.train import evaluate

# Published counts (papers / model cards / config.json + safetensors index).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-1-33b": 32_528_943_616,
    "llama-1-65b": 65_285_660_672,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
}


def formula_count(c: models.ModelConfig) -> int:
    """Independent count from the architecture's maths (not from the module tree)."""
    d, f, V, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.n_layers
    attn = d * d + 2 * d * c.kv_dim + d * d          # q, k, v, o
    mlp = 3 * d * f                                  # gate, up, down
    per_layer = attn + mlp + 2 * d                   # two RMSNorm weights
    head = 0 if c.tie_embeddings else V * d
    return V * d + L * per_layer + d + head


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_param_counts_on_meta(name):
    model = models.build(name, device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert lora.config_params(name) == PUBLISHED[name]
    assert formula_count(models.get_config(name)) == PUBLISHED[name]


def test_every_registered_config_counts_like_the_formula():
    for name, cfg in models.CONFIGS.items():
        assert lora.config_params(cfg) == formula_count(cfg), name


def test_all_linear_widths_are_multiples_of_64():
    for name, cfg in models.CONFIGS.items():
        model = models.build(cfg, device="meta")
        for mod_name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear):
                assert mod.in_features % 64 == 0 and mod.out_features % 64 == 0, (name, mod_name)


def test_unknown_config_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model config 'llama-9b'.*llama-2-7b.*tiny"):
        models.get_config("llama-9b")


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        models.ModelConfig(64, 130, 256, 1, 4)
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads"):
        models.ModelConfig(64, 128, 256, 1, 4, 3)
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        models.ModelConfig(64, 128, 256, 0, 4)
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['dim'\]"):
        models.ModelConfig.from_dict({**models.CONFIGS["tiny"].to_dict(), "dim": 3})


def test_linear_layers_are_named_like_llama():
    model = models.build("tiny")
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj", "lm_head"}


def small_config(**kw):
    base = dict(vocab_size=64, hidden_size=64, intermediate_size=128, n_layers=2, n_heads=4,
                n_kv_heads=2, max_seq_len=16)
    return models.ModelConfig(**{**base, **kw})


def test_forward_shapes_and_tied_head():
    seed_everything(0)
    model = models.build(small_config())
    ids = torch.randint(0, 64, (3, 10))
    assert model(ids).shape == (3, 10, 64)
    tied = models.build(small_config(tie_embeddings=True))
    assert tied.lm_head is None
    assert tied.num_params() == model.num_params() - 64 * 64
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq_len\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="longer than max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


class _LargestFloat32(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest float32 tensor any op creates off the meta device."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and not t.is_meta:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("lowp", [True, False])
def test_low_precision_build_never_makes_a_float32_weight(lowp):
    """build(dtype=bf16) allocates every weight in bf16 (a 7B model never holds 27 GB of
    float32 on the device); building in float32 and casting does, which this test sees."""
    cfg = models.get_config("tiny")
    with _LargestFloat32() as rec:
        m = (models.build(cfg, dtype=torch.bfloat16) if lowp
             else models.build(cfg).to(torch.bfloat16))
    biggest_weight = max(p.numel() for p in m.parameters())
    if lowp:
        assert rec.largest < biggest_weight  # only the small RoPE tables are float32 on the way
    else:
        assert rec.largest >= biggest_weight
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    ref = models.build(cfg).to(torch.bfloat16)
    assert torch.equal(m.rope.cos, ref.rope.cos) and torch.equal(m.rope.sin, ref.rope.sin)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(
        [m.norm, *[x.input_layernorm for x in m.layers]],
        [ref.norm, *[x.input_layernorm for x in ref.layers]], strict=True))
    w = m.layers[0].mlp.up_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_causal_mask_really_causal():
    seed_everything(0)
    model = models.build(small_config()).eval()
    ids = torch.randint(0, 64, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 64
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3  # later positions do see the change


def test_gqa_shapes_and_equivalence_to_expanded_mha():
    seed_everything(0)
    cfg = small_config(n_heads=4, n_kv_heads=2)
    model = models.build(cfg).eval()
    attn = model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (cfg.kv_dim, 64) == (32, 64)
    assert attn.q_proj.weight.shape == (64, 64)
    # An MHA model whose k/v heads are the GQA heads repeated per group computes the same.
    mha = models.build(cfg.replace(n_kv_heads=4)).eval()
    state = model.state_dict()
    for i in range(cfg.n_layers):
        for p in ("k_proj", "v_proj"):
            w = state[f"layers.{i}.self_attn.{p}.weight"].view(2, 16, 64)
            state[f"layers.{i}.self_attn.{p}.weight"] = w.repeat_interleave(2, 0).reshape(64, 64)
    mha.load_state_dict(state)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), mha(ids), rtol=1e-5, atol=1e-5)


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = models.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    expected = x.clone()
    for idx in [(i, j) for i in range(3) for j in range(5)]:
        v = x[idx]
        rms = math.sqrt(sum(float(t) ** 2 for t in v) / 8 + 1e-6)
        expected[idx] = v / rms * norm.weight.double()
    torch.testing.assert_close(norm(x.float()).double(), expected, rtol=1e-5, atol=1e-6)


def test_rotary_keeps_norms_and_sees_only_relative_position():
    torch.manual_seed(0)
    rope = models.RotaryEmbedding(head_dim=16, max_seq_len=64)
    q, k = torch.randn(16), torch.randn(16)
    # same vector at every position, then rotate
    qs = rope(q.expand(1, 1, 64, 16).contiguous())[0, 0]
    ks = rope(k.expand(1, 1, 64, 16).contiguous())[0, 0]
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(64), rtol=1e-5, atol=1e-5)
    # <R_m q, R_n k> depends on m - n only
    d1 = qs[10] @ ks[7]
    d2 = qs[40] @ ks[37]
    torch.testing.assert_close(d1, d2, rtol=1e-4, atol=1e-4)
    assert abs(float(qs[10] @ ks[7] - qs[10] @ ks[2])) > 1e-3
    # position 0 is the identity
    torch.testing.assert_close(qs[0], q)


# ----------------------------------------------------------------- shipped checkpoint


def test_load_pretrained_solves_its_pretraining_task():
    model, tok, card = models.load_pretrained()
    assert card["name"] == models.DEFAULT_PRETRAINED
    assert card["sha256"] == models.sha256_file(
        models.CHECKPOINT_DIR / f"{models.DEFAULT_PRETRAINED}.safetensors")
    assert isinstance(tok, data.Tokenizer)
    assert not model.training
    assert evaluate(model, card["pretrain_task"], n=200) >= 0.95


@pytest.fixture
def ckpt_copy(tmp_path):
    name = models.DEFAULT_PRETRAINED
    for ext in (".json", ".safetensors"):
        shutil.copy(models.CHECKPOINT_DIR / f"{name}{ext}", tmp_path / f"{name}{ext}")
    return tmp_path, name


def test_hash_mismatch_is_a_clear_error(ckpt_copy):
    d, name = ckpt_copy
    raw = bytearray((d / f"{name}.safetensors").read_bytes())
    raw[-1] ^= 0xFF  # flip bits in the last weight
    (d / f"{name}.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match its card: sha256 is"):
        models.load_pretrained(name, directory=d)


def test_config_mismatch_is_a_clear_error(ckpt_copy):
    d, name = ckpt_copy
    card = json.loads((d / f"{name}.json").read_text())
    card["config"]["intermediate_size"] = 384
    (d / f"{name}.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"does not fit the config.*mlp.gate_proj.weight"):
        models.load_pretrained(name, directory=d)


def test_missing_checkpoint_lists_present(tmp_path, ckpt_copy):
    d, name = ckpt_copy
    with pytest.raises(FileNotFoundError, match=rf"no checkpoint 'nope'.*{name}"):
        models.load_pretrained("nope", directory=d)


def _pretrain_script():
    import importlib.util

    path = models.CHECKPOINT_DIR.parent.parent / "scripts" / "pretrain.py"
    spec = importlib.util.spec_from_file_location("pretrain_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pretrain_script_is_deterministic_and_its_card_loads(tmp_path):
    """A 6-step run of scripts/pretrain.py, twice: same metrics and bytes; the card loads."""
    script = _pretrain_script()
    cards = []
    for sub in ("a", "b"):
        argv = ["--steps", "6", "--warmup", "2", "--name", "t", "--quiet",
                "--out-dir", str(tmp_path / sub)]
        assert script.main(argv) == 0
        cards.append(json.loads((tmp_path / sub / "t.json").read_text()))
    a, b = cards
    assert a["metrics"] == b["metrics"] and a["sha256"] == b["sha256"]
    assert a["sha256"] == models.sha256_file(tmp_path / "a" / "t.safetensors")
    assert {"config", "steps", "seed", "batch_size", "lr", "metrics", "versions", "wall_s",
            "pretrain_task", "finetune_tasks"} <= set(a)
    model, _, card = models.load_pretrained("t", directory=tmp_path / "a")
    assert card == a and model.config == models.get_config("tiny")
