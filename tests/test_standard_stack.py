"""labkit.standard_stack: the transformers + PEFT path, unchanged on two exported models,
and adapters moving between PEFT and labkit on the course model.

The second model differs from the course model in every way a real checkpoint might:
8 query heads sharing 2 k/v heads (groups of 4, not 2), tied input and output embeddings,
another RoPE base and norm epsilon, and a byte-level BPE tokenizer with role-tag special
tokens and another chat template. Tolerances: float32, rtol = atol = 1e-5 (see
tests/test_hf_export.py); a merged weight W + s B A differs from W x + s B (A x) by float
rounding only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit import _deps, chat
from labkit import hf_export as X
from labkit import lora as L
from labkit import standard_stack as S
from labkit.configs import ModelConfig
from labkit.hf_tokenizer import bpe_chat_tokenizer, course_tokenizer
from labkit.models import build
from labkit.pretrained import load_pretrained

transformers, peft = _deps.import_hf()
ROOT = Path(__file__).resolve().parent.parent
TOL = dict(rtol=1e-5, atol=1e-5)
TASK = chat.chat_task()
OTHER = ModelConfig(vocab_size=384, hidden_size=64, intermediate_size=128, n_layers=2,
                    n_heads=8, n_kv_heads=2, max_seq_len=64, rope_theta=500000.0,
                    norm_eps=1e-6, tie_embeddings=True, name="other")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    torch.manual_seed(0)
    return {"course": X.export_hf(tmp_path_factory.mktemp("course")),
            "other": X.export_hf(tmp_path_factory.mktemp("other"), build(OTHER),
                                 bpe_chat_tokenizer())}


@pytest.fixture(scope="module")
def runs(dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    return {name: S.train_with_peft(d, TASK, out / name, steps=20)
            for name, d in dirs.items()}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("name", ["course", "other"])
def test_same_code_path_on_both_models(runs, name, tmp_path):
    run = runs[name]
    base = run.reloaded.get_base_model()
    if name == "other":  # the other shape really is another shape
        assert base.config.num_attention_heads // base.config.num_key_value_heads == 4
        assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()
        assert type(run.tokenizer.backend_tokenizer.model).__name__ == "BPE"
    assert all(torch.isfinite(torch.tensor(run.losses)))
    assert sum(run.losses[-3:]) / 3 < run.losses[0] - 0.1  # it learns
    assert {p.name for p in run.adapter_dir.iterdir()} >= {"adapter_config.json",
                                                           "adapter_model.safetensors"}
    lora_layers = [n for n, m in run.model.named_modules() if hasattr(m, "lora_A")]
    assert len(lora_layers) == 7 * 2 and not any("lm_head" in n for n in lora_layers)
    chats = [TASK.messages(p, a) for p, a in TASK.sample(8, seed=1)]
    batch = S.chat_batch(run.tokenizer, chats)
    trained = logits(run.model, batch)
    torch.testing.assert_close(logits(run.reloaded, batch), trained, **TOL)
    torch.testing.assert_close(logits(run.merged, batch), trained, **TOL)
    assert not any(hasattr(m, "lora_A") for m in run.merged.modules())
    run.merged.save_pretrained(tmp_path)  # a plain model again: labkit reads it back
    real = batch["attention_mask"].bool()  # labkit's model takes no mask: compare real tokens
    torch.testing.assert_close(X.from_hf(tmp_path)(batch["input_ids"])[real], trained[real],
                               **TOL)
    with run.reloaded.disable_adapter():  # the adapter does change the outputs
        assert not torch.allclose(logits(run.reloaded, batch), trained, atol=1e-2)


def test_chat_batch_equals_labkits_chat_batch():
    pairs = TASK.sample(12, seed=4, split="train")
    ours = chat.encode_chat(pairs)
    theirs = S.chat_batch(course_tokenizer(), [TASK.messages(p, a) for p, a in pairs])
    for k, v in ours._asdict().items():
        assert torch.equal(theirs[k], v), k


def test_chat_batch_refuses_what_it_cannot_mask():
    chats = [TASK.messages("U:hello A:", "olleh")]  # <bos>U:hello A:olleh<eos>: 17 ids
    assert S.chat_batch(course_tokenizer(), chats)["input_ids"].shape == (1, 17)
    with pytest.raises(ValueError, match="takes 17 tokens, more than the model's 16"):
        S.chat_batch(course_tokenizer(model_max_length=16), chats)
    tok = course_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}="
    with pytest.raises(ValueError, match="does not start with its prompt"):
        S.chat_batch(tok, chats)  # prompt "hello=", conversation "helloolleh="


def test_peft_adapter_loads_in_labkit(runs, dirs, tmp_path):
    run = runs["course"]
    X.adapter_to_labkit(run.adapter_dir, tmp_path / "for-labkit")
    ours = load_pretrained().model
    rep = L.load_adapter(ours, tmp_path / "for-labkit")
    assert len(rep.layers) == 14
    b = TASK.chat_batch(8, seed=7)
    with torch.no_grad():
        want = run.model(**b._asdict()).logits
        got = ours(b.input_ids)
    real = b.attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], **TOL)


def test_labkit_adapter_loads_in_peft(dirs, tmp_path):
    ours = load_pretrained().model
    L.add_lora(ours, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj"], r=4, alpha=8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in L.get_adapter_params(ours).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ours.eval()
    L.save_adapter(ours, tmp_path / "labkit", task_type="CAUSAL_LM")
    X.adapter_to_hf(tmp_path / "labkit", tmp_path / "for-peft")
    pm = S.reload(dirs["course"], tmp_path / "for-peft")
    b = TASK.chat_batch(8, seed=8)
    with torch.no_grad():
        want = ours(b.input_ids)
        got = pm(input_ids=b.input_ids).logits
        base = load_pretrained().model(b.input_ids)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(want, base, atol=1e-2)


@pytest.mark.skipif(not _deps.bnb_available(), reason="bitsandbytes does not import here")
def test_four_bit_path_runs_and_reloads(dirs, tmp_path):
    torch.manual_seed(0)
    model, tok = S.load(dirs["course"], four_bit=True)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    model = S.add_lora(model)
    chats = [TASK.messages(p, a) for p, a in TASK.sample(48, seed=0, split="train")]
    losses = S.train_steps(model, tok, chats, steps=3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    model.save_pretrained(tmp_path / "qlora")
    again = S.reload(dirs["course"], tmp_path / "qlora", four_bit=True)
    batch = S.chat_batch(tok, chats[:4])
    torch.testing.assert_close(logits(again, batch), logits(model, batch), **TOL)


def test_the_path_writes_nothing_to_stderr(tmp_path):
    """What a lesson's stderr would show: the imports and one whole run, in a fresh process
    (import-time noise happens once per process)."""
    code = ("import sys; from labkit import chat, hf_export, standard_stack as S\n"
            f"d = hf_export.export_hf({str(tmp_path / 'm')!r})\n"
            f"run = S.train_with_peft(d, chat.chat_task(), {str(tmp_path / 'a')!r}, steps=2,"
            " batch_size=4)\n"
            "print(len(run.losses))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout == "2\n", r.stderr
    assert r.stderr == ""
