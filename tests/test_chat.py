"""labkit.chat: the chat format, answer-only labels counted by hand, the held-out split.

(That the Hugging Face tokenizer's chat template gives the same ids is checked in
tests/test_hf_export.py, beside the tokenizer.)
"""

from __future__ import annotations

import random

import pytest
import torch

from labkit import chat, data

IGN = data.IGNORE_INDEX


def test_labels_cover_the_answer_only_by_hand_count():
    b = chat.encode_chat([("U:hello A:", "olleh"), ("U:abcd A:", "dcba")])
    # row 0: <bos> U : h e l l o ' ' A : = 11 prompt ids, then o l l e h <eos> = 6 answer ids
    assert b.input_ids[0].tolist() == [1, 85, 58, 104, 101, 108, 108, 111, 32, 65, 58,
                                       111, 108, 108, 101, 104, 2]
    assert b.labels[0].tolist() == [IGN] * 11 + [111, 108, 108, 101, 104, 2]
    # row 1: 1 + 2 + 4 + 3 = 10 prompt ids, 5 answer ids, 2 of padding (no loss, masked out)
    assert b.labels[1].tolist() == [IGN] * 10 + [100, 99, 98, 97, 2] + [IGN] * 2
    assert b.attention_mask.tolist() == [[1] * 17, [1] * 15 + [0] * 2]
    assert b.input_ids[1, 15:].tolist() == [data.PAD] * 2
    assert int((b.labels != IGN).sum()) == 6 + 5
    assert chat.show(b, 1).splitlines() == [
        "model sees: <bos> U : a b c d \u2423 A : d c b a <eos>",
        "loss sees :   .   . . . . . . . . . d c b a <eos>"]


def test_chat_batch_is_labkits_batch_with_labels_unshifted():
    task = chat.chat_task()
    hf = task.chat_batch(16, seed=3)
    ids, labels = task.batch(16, seed=3)  # labkit's layout: labels[:, t] is token t + 1
    T = ids.shape[1]
    assert hf.input_ids.shape[1] == T + 1
    # labkit's inputs leave out each row's last token, <eos> (it is only ever a target)
    assert torch.equal(hf.input_ids.masked_fill(hf.input_ids == data.EOS, data.PAD)[:, :T], ids)
    assert torch.equal(chat.shift_labels(hf.labels)[:, :T], labels)
    assert (chat.shift_labels(hf.labels)[:, T] == IGN).all()
    for row, mask in zip(hf.labels, hf.attention_mask, strict=True):
        answer = [t for t in row.tolist() if t != IGN]
        assert answer[-1] == data.EOS and len(answer) <= task.max_answer_len
        assert row[:int(mask.sum()) - len(answer)].eq(IGN).all()  # no loss on the prompt


def test_fits_the_shipped_model_and_uses_known_characters():
    task = chat.chat_task()
    assert task.max_seq_len == 1 + 2 + 8 + 3 + 8 + 1 == 23 <= 32
    b = task.chat_batch(200, seed=0)
    assert b.input_ids.shape[1] <= 32
    used = set(b.input_ids.unique().tolist()) - {data.PAD, data.BOS, data.EOS}
    assert all(32 <= i < 127 for i in used)  # printable ASCII: in the 128-id vocabulary
    assert task.prompt("hello") == "U:hello A:" and task.answer("hello") == "olleh"
    assert chat.chat_task("vowels").answer("hello") == "*ll*h"
    assert task.messages("U:hello A:", "olleh") == [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "olleh"}]


def test_split_is_deterministic_and_disjoint():
    task = chat.chat_task()
    train = {p for p, _ in task.sample(3000, seed=0, split="train")}
    held = {p for p, _ in task.sample(600, seed=0)}  # sample() draws held-out words
    assert not train & held
    assert all(task.split_of(p[2:-3]) == "eval" for p in held)
    # the same on every machine: SHA-256 buckets and string-seeded draws
    assert task.sample(2, seed=0) == [("U:ievjcang A:", "gnacjvei"), ("U:ujemaqb A:", "bqameju")]
    words = [p[2:-1] for p, _ in data.get_task("reverse").sample(4000, seed=1)]
    share = sum(task.split_of(w) == "eval" for w in words) / len(words)
    assert 0.17 < share < 0.23  # one bucket in 5
    stream = task.chat_batch(64, seed=5).input_ids
    words_seen = {data.TOKENIZER.decode(r).split(" ")[0][2:] for r in stream}
    assert all(task.split_of(w) == "train" for w in words_seen)


def test_bad_arguments():
    task = chat.chat_task()
    with pytest.raises(ValueError, match="split must be one of"):
        task.sample(3, seed=0, split="test")
    with pytest.raises(ValueError, match="exactly one of seed="):
        task.chat_batch(3)
    with pytest.raises(ValueError, match="eval_buckets must be an int >= 2"):
        chat.chat_task(eval_buckets=1)
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        chat.chat_task("sort")


def test_conversations_are_the_examples_chat_batch_encodes():
    """A loop that renders ``conversations`` with a tokenizer's chat template (lesson 10)
    trains on the words ``chat_batch`` / ``batch`` (what labkit.train draws) would give."""
    task = chat.chat_task()
    convs = task.conversations(16, seed=3)
    assert convs[0][0]["role"] == "user" and convs[0][1]["role"] == "assistant"
    pairs = [(task.prompt(u["content"]), a["content"]) for u, a in convs]
    for ours, want in zip(chat.encode_chat(pairs), task.chat_batch(16, seed=3), strict=True):
        assert torch.equal(ours, want)
    s1, s2 = random.Random("x"), random.Random("x")
    for _ in range(3):  # a stream stays in step with chat_batch's draws
        pairs = [(task.prompt(u["content"]), a["content"])
                 for u, a in task.conversations(8, rng=s1)]
        assert torch.equal(chat.encode_chat(pairs).input_ids,
                           task.chat_batch(8, rng=s2).input_ids)
    held = task.conversations(20, seed=0, split="eval")
    assert all(task.split_of(u["content"]) == "eval" for u, _ in held)
    with pytest.raises(ValueError, match="exactly one of seed="):
        task.conversations(3)
    with pytest.raises(ValueError, match="n must be a positive int"):
        task.conversations(0, rng=random.Random(0))
