"""Hugging Face tokenizers for exported models: the course's characters, and a small BPE.

:func:`course_tokenizer` is :class:`labkit.data.Tokenizer` rebuilt with the ``tokenizers``
library, id for id: printable ASCII characters are their own code points (``"a"`` is 97),
``<pad>``, ``<bos>``, ``<eos>`` are 0, 1, 2, and the ids labkit leaves unused (3-31, 127)
hold placeholder tokens ``<unused3>`` ... that no text encodes to, so the tokenizer has the
model's 128 entries. It is a ``WordLevel`` model over single characters (a pre-tokenizer
splits every character off; a ``Fuse`` decoder joins them back without spaces), adds
``<bos>`` in front as a LLaMA tokenizer does, and carries :data:`labkit.chat.CHAT_TEMPLATE`.
Two differences from labkit's, both Hugging Face's rules: the text ``"<eos>"`` encodes to
the special token (labkit spells it out character by character), and a character outside
the vocabulary is refused with ``tokenizers``' message "Missing [UNK] token" (labkit's names
the character).

:func:`train_bpe_tokenizer` trains a byte-level BPE (GPT-2's and Llama-3's kind) on text you
give, offline; :func:`bpe_chat_tokenizer` trains one on generated words with a chat template
of the usual shape (``<|user|>...<|end|><|assistant|>``): a tokenizer unlike the course's,
so that code written for one is checked on the other.

Imports: the standard library, ``tokenizers``, transformers (through :mod:`labkit._deps`),
:mod:`labkit.data`, :mod:`labkit.chat`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from labkit import _deps

# isort: split
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from labkit.chat import CHAT_TEMPLATE
from labkit.data import BOS, EOS, PAD, TOKENIZER, VOCAB_SIZE

#: A chat template of the common shape (role tags as special tokens, a turn-end token that
#: is also the end-of-sequence token), for :func:`bpe_chat_tokenizer`.
TAGGED_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _wrap(tok: Tokenizer, bos: str, eos: str, pad: str, chat_template: str,
          model_max_length: int):
    """A ``tokenizers.Tokenizer`` as the transformers tokenizer that ``save_pretrained``
    writes and ``AutoTokenizer.from_pretrained`` reads back."""
    transformers, _ = _deps.import_hf()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
        chat_template=chat_template, model_max_length=model_max_length,
        padding_side="right", clean_up_tokenization_spaces=False)


def course_tokenizer(model_max_length: int = 32):
    """labkit's character tokenizer as a Hugging Face fast tokenizer (same ids).

    Args:
        model_max_length: the model's positions (32 for the shipped model); transformers
            warns about longer inputs and truncates to it when asked.
    """
    specials = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>"}
    vocab = {}
    for i in range(VOCAB_SIZE):
        if i in specials:
            vocab[specials[i]] = i
        elif 32 <= i < 127:
            vocab[TOKENIZER.decode([i])] = i
        else:
            vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab))  # no unk token: an unknown character is an error
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([specials[i] for i in sorted(specials)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)])
    return _wrap(tok, "<bos>", "<eos>", "<pad>", CHAT_TEMPLATE, model_max_length)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *, bos: str = "<|begin|>",
                        eos: str = "<|end|>", pad: str = "<|pad|>",
                        extra_special: Iterable[str] = (), chat_template: str = TAGGED_TEMPLATE,
                        model_max_length: int = 64):
    """Train a byte-level BPE tokenizer on ``texts`` (offline, deterministic for given text).

    The special tokens take the first ids (pad 0, bos 1, eos 2, then ``extra_special``),
    the 256 byte symbols the next, then come the learnt merges, up to ``vocab_size``
    tokens in all. Encoding adds ``bos`` in front.

    Raises:
        ValueError: ``vocab_size`` leaves no room for a single merge.
    """
    specials = [pad, bos, eos, *extra_special]
    if vocab_size <= 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} must exceed the 256 byte symbols plus "
                         f"{len(specials)} special tokens, or BPE learns no merge")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return _wrap(tok, bos, eos, pad, chat_template, model_max_length)


def generated_words(n: int, seed: int = 0) -> list[str]:
    """``n`` random lowercase words of 2-9 letters (``random.Random(seed)``): text to train
    a tokenizer on without downloading any."""
    rng = random.Random(f"words/{seed}")
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
            for _ in range(n)]


def bpe_chat_tokenizer(n_words: int = 400, vocab_size: int = 320, seed: int = 0,
                       model_max_length: int = 64):
    """A byte-level BPE trained on ``n_words`` generated words (lines of a few words and
    their reversals), with role tags ``<|user|>`` / ``<|assistant|>`` and
    :data:`TAGGED_TEMPLATE`: a tokenizer of another kind than the course's."""
    words = generated_words(n_words, seed)
    lines = [" ".join(words[i:i + 4] + [w[::-1] for w in words[i:i + 4]])
             for i in range(0, len(words), 4)]
    return train_bpe_tokenizer(lines, vocab_size, extra_special=("<|user|>", "<|assistant|>"),
                               model_max_length=model_max_length)
