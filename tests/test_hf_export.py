"""labkit.hf_export and labkit.hf_tokenizer: the course model as a transformers model.

Tolerance: float32, eager attention; both sides do the same operations on the same weights,
so logits agree to float rounding (measured: exactly, on this machine); we allow
rtol = atol = 1e-5. A wrong RoPE layout, GQA grouping or norm epsilon moves logits by
orders of magnitude more.
"""

from __future__ import annotations

import json

import pytest
import torch

from labkit import _deps, chat, data
from labkit import hf_export as X
from labkit.configs import ModelConfig
from labkit.hf_tokenizer import bpe_chat_tokenizer, course_tokenizer
from labkit.models import RMSNorm, RotaryEmbedding, build, rotate_half
from labkit.pretrained import load_pretrained
from labkit.train import lm_loss

transformers, _ = _deps.import_hf()
from transformers.models.llama import modeling_llama as ML  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
OTHER = ModelConfig(vocab_size=384, hidden_size=64, intermediate_size=128, n_layers=2,
                    n_heads=8, n_kv_heads=2, max_seq_len=64, rope_theta=500000.0,
                    norm_eps=1e-6, tie_embeddings=True, name="other")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    d = X.export_hf(tmp_path_factory.mktemp("course"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                           attn_implementation="eager")
    return d, hf.eval(), load_pretrained().model


def test_export_writes_a_llama_directory(course):
    d, hf, _ = course
    assert sorted(p.name for p in d.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["architectures"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"],
            cfg["max_position_embeddings"], cfg["rms_norm_eps"], cfg["hidden_act"]) == (
        ["LlamaForCausalLM"], 2, False, 32, 1e-5, "silu")
    assert type(hf) is transformers.LlamaForCausalLM
    assert hf.config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)


def test_transformers_conventions_equal_labkits():
    """The pieces, one by one: rotate-half, the RoPE tables, RMSNorm, the GQA grouping."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 16, generator=g)
    torch.testing.assert_close(ML.rotate_half(x), rotate_half(x), rtol=0, atol=0)
    hcfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                    rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    cos, sin = ML.LlamaRotaryEmbedding(hcfg)(x, torch.arange(7)[None])
    ours = RotaryEmbedding(16, 7, theta=500.0)
    torch.testing.assert_close(cos[0], ours.cos, **TOL)
    torch.testing.assert_close(sin[0], ours.sin, **TOL)
    norm, hnorm = RMSNorm(16, eps=1e-6), ML.LlamaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        hnorm.weight.copy_(norm.weight)
    torch.testing.assert_close(hnorm(x), norm(x), rtol=0, atol=0)
    kv = torch.randn(2, 2, 7, 16, generator=g)  # 2 k/v heads -> 4 query heads
    assert torch.equal(ML.repeat_kv(kv, 2), kv.repeat_interleave(2, dim=1))


def test_logits_equal_labkits(course):
    _, hf, ours = course
    b = chat.chat_task().chat_batch(16, seed=1)
    with torch.no_grad():
        want = ours(b.input_ids)
        full = hf(input_ids=b.input_ids).logits  # causal mask only, as labkit's
        padded = hf(**b._asdict())                # with the padding masked and the labels
    torch.testing.assert_close(full, want, **TOL)
    real = b.attention_mask.bool()  # with a mask, padded positions differ (nobody reads them)
    torch.testing.assert_close(padded.logits[real], want[real], **TOL)
    assert want.abs().max() > 5  # real logits, not all near zero
    # transformers shifts labels inside; labkit's loss takes them shifted
    torch.testing.assert_close(padded.loss, lm_loss(want, chat.shift_labels(b.labels)), **TOL)


def test_tokenizer_ids_equal_labkits(course):
    tok = transformers.AutoTokenizer.from_pretrained(course[0])
    assert len(tok) == data.VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (data.PAD, data.BOS, data.EOS)
    ascii_all = "".join(chr(i) for i in range(32, 127))
    for s in ["R:hello=olleh", "U:hello A:", " ~!", ascii_all, "a  b"]:
        assert tok(s, add_special_tokens=False).input_ids == data.TOKENIZER.encode(s)
        assert tok(s).input_ids == data.TOKENIZER.encode(s, bos=True)  # <bos> first, like LLaMA
        ids = data.TOKENIZER.encode(s, bos=True, eos=True)
        assert tok.decode(ids, skip_special_tokens=True) == data.TOKENIZER.decode(ids) == s
    assert tok.decode([1, 97, 2]) == "<bos>a<eos>"
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):
        tok("café")


def test_chat_template_gives_chat_task_ids(course):
    tok = transformers.AutoTokenizer.from_pretrained(course[0])
    assert tok.chat_template == chat.CHAT_TEMPLATE
    task = chat.chat_task()
    pairs = task.sample(20, seed=2)
    b = chat.encode_chat(pairs)
    for (p, a), ids, labels, mask in zip(pairs, *b, strict=True):
        n = int(mask.sum())
        enc = tok.apply_chat_template(task.messages(p, a), return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert enc["input_ids"] == ids[:n].tolist()
        assert enc["assistant_masks"] == (labels[:n] != data.IGNORE_INDEX).long().tolist()
        prompt = tok.apply_chat_template(task.messages(p), add_generation_prompt=True,
                                         return_dict=False)
        assert prompt == data.TOKENIZER.encode(p, bos=True)
    with pytest.raises(Exception, match="has the roles user and assistant, not system"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])


def test_round_trip_course_model(course, tmp_path):
    d, hf, ours = course
    back = X.from_hf(d)
    assert back.config == ours.config.replace(name="from-hf")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), back.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2), k
    again = X.export_hf(tmp_path / "again", back)
    assert (again / "model.safetensors").read_bytes() == (d / "model.safetensors").read_bytes()
    hf.save_pretrained(tmp_path / "saved-by-transformers")  # its own writer, its own config
    for k, v in X.from_hf(tmp_path / "saved-by-transformers").state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k


def test_round_trip_tied_gqa_bpe_model(tmp_path):
    torch.manual_seed(0)
    model = build(OTHER).eval()
    tok = bpe_chat_tokenizer()
    d = X.export_hf(tmp_path / "other", model, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied
    assert hf.config.num_key_value_heads == 2 and hf.config.num_attention_heads == 8
    assert hf.config.rope_parameters["rope_theta"] == 500000.0
    ids = torch.randint(0, len(tok), (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids), **TOL)
        torch.testing.assert_close(X.from_hf(d)(ids), model(ids), rtol=0, atol=0)
    assert transformers.AutoTokenizer.from_pretrained(d).get_vocab() == tok.get_vocab()


def test_clear_errors(course, tmp_path):
    d, hf, ours = course
    with pytest.raises(TypeError, match="takes a labkit LlamaLM, got LlamaForCausalLM"):
        X.export_hf(tmp_path / "x", hf)
    with pytest.raises(ValueError, match="the tokenizer has 320 ids but the model only 128"):
        X.export_hf(tmp_path / "x", ours, bpe_chat_tokenizer())
    with pytest.raises(ValueError, match="pass the tokenizer it was trained with"):
        X.export_hf(tmp_path / "x", build(OTHER))
    cfg = json.loads((d / "config.json").read_text())
    with pytest.raises(ValueError, match="hidden_act='gelu' .*attention_bias=True"):
        X.config_from_hf(cfg | {"attention_bias": True, "hidden_act": "gelu"})
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        X.from_hf(tmp_path)
    assert course_tokenizer().model_max_length == 32
