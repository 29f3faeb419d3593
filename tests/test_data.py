"""labkit.data: tokenizer, tasks, batches."""

from __future__ import annotations

import pytest
import torch

from labkit import data

tok = data.TOKENIZER


def test_tokenizer_round_trip_and_ids():
    text = "R:hello=olleh ~!"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == data.BOS and ids[-1] == data.EOS
    assert ids[1:-1] == [ord(c) for c in text]  # printable ASCII is its own code point
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=False) == f"<bos>{text}<eos>"
    assert tok.decode(torch.tensor(ids)) == text
    assert max(ids) < tok.vocab_size == 128


def test_tokenizer_bad_input():
    with pytest.raises(ValueError, match=r"characters \['é'\] are not in the vocabulary"):
        tok.encode("café")
    with pytest.raises(TypeError, match="encode\\(\\) takes a str"):
        tok.encode(["a"])
    with pytest.raises(ValueError, match="token id 5 is not used"):
        tok.decode([5])


def test_task_answers_match_an_independent_rule():
    word = "hazel"
    assert data.TASKS["reverse"].answer(word) == "lezah"
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    nxt = {c: alphabet[(i + 1) % 26] for i, c in enumerate(alphabet)}
    mirror = dict(zip(alphabet, reversed(alphabet), strict=True))
    assert data.TASKS["shift"].answer(word) == "".join(nxt[c] for c in "lezah") == "mfabi"
    assert data.TASKS["atbash"].answer(word) == "".join(mirror[c] for c in "lezah") == "ovazs"
    assert data.TASKS["vowels"].answer(word) == "l*z*h"
    assert data.TASKS["shift"].prompt(word) == "S:hazel="


def test_vowels_words_always_hold_a_vowel():
    task = data.get_task("vowels")
    pairs = task.sample(300, seed=0)
    assert all(any(c in "aeiou" for c in p[2:-1]) for p, _ in pairs)
    assert all("*" in a for _, a in pairs)  # so answering by plain reversal is always wrong


def test_samples_are_seeded_and_valid():
    task = data.get_task("shift")
    a, b, c = task.sample(50, seed=3), task.sample(50, seed=3), task.sample(50, seed=4)
    assert a == b and a != c
    for prompt, answer in a:
        word = prompt[2:-1]
        assert prompt == f"S:{word}=" and task.min_len <= len(word) <= task.max_len
        assert answer == task.answer(word)
    # a task's stream differs from another's with the same seed
    assert [p[2:] for p, _ in data.get_task("reverse").sample(5, 3)] != [p[2:] for p, _ in a[:5]]


def test_batch_layout_loss_only_on_answer():
    ids, labels = data.get_task("reverse").batch(8, seed=0)
    assert ids.shape == labels.shape and ids.dtype == torch.long
    pairs = data.get_task("reverse").batch(8, seed=0)
    assert torch.equal(pairs[0], ids)  # same seed, same batch
    for row_ids, row_lab in zip(ids, labels, strict=True):
        full = [t for t in row_ids.tolist() if t != data.PAD]
        text = tok.decode(full)
        prompt, answer = text.split("=")
        targets = [t for t in row_lab.tolist() if t != data.IGNORE_INDEX]
        assert targets == tok.encode(answer, eos=True)  # answer + <eos>, nothing else
        # each label is the next input token (teacher forcing)
        n = len(full)
        assert row_lab[n - 1].item() == data.EOS
        assert torch.equal(row_lab[len(prompt) + 1:n - 1], row_ids[len(prompt) + 2:n])


def test_bad_task_and_sample_arguments():
    with pytest.raises(ValueError, match="unknown task 'sort'; tasks: reverse, vowels, shift"):
        data.get_task("sort")
    task = data.get_task("reverse")
    with pytest.raises(ValueError, match="n must be a positive int"):
        task.sample(0, seed=1)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        task.sample(3, seed=-1)
    with pytest.raises(ValueError, match="exactly one of seed="):
        task.batch(3)
