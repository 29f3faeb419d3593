"""Chat-style prompts with answer-only labels: the course's instruction-tuning data.

Instruction tuning teaches a model a *conversation format*: a user turn, then an assistant
turn that the model must write. In the course's character vocabulary one exchange is::

    <bos>U:hello A:olleh<eos>
    |------------||-------|
     the prompt    the answer: the only tokens the loss sees

The user turn is ``U:`` + the message + a space; the assistant turn is ``A:`` + the reply +
``<eos>``; a prompt that asks for a reply ends with ``A:`` (the *generation prompt*). Every
character is printable ASCII, so the shipped model's 128-id tokenizer has all of them; the
longest exchange (8-letter words) is 1 + 2 + 8 + 3 + 8 + 1 = 23 ids, within its 32
positions. The pretrained model knows the skill (reversing, from ``R:hello=olleh``) but not
this format: fine-tuning here teaches the format, which is what instruction tuning mostly
does.

:data:`CHAT_TEMPLATE` is the same format as a Jinja chat template, the string a Hugging Face
tokenizer carries (:mod:`labkit.hf_tokenizer` puts it in the exported tokenizer), so
``tokenizer.apply_chat_template(messages)`` gives the ids :class:`ChatTask` gives; a test
checks it. Its ``{% generation %}`` markers let ``return_assistant_tokens_mask=True`` find
the answer tokens too.

Labels follow Hugging Face's convention: ``labels`` is aligned with ``input_ids`` (the model
shifts them: logits at t predict token t + 1) and holds ``IGNORE_INDEX`` (-100) on the prompt
and the padding. labkit's own :func:`labkit.train.lm_loss` takes labels already shifted;
:func:`shift_labels` converts. A :class:`ChatTask` is a :class:`labkit.data.Task`, so
``labkit.train.train`` and ``labkit.train.evaluate`` run it unchanged.

Held-out split: a word is held out when its SHA-256 falls in one bucket of
:attr:`ChatTask.eval_buckets`, so the split is the same on every machine and no word is in
both (a random draw of short words would repeat some).

Imports: the standard library, torch, :mod:`labkit.data`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import NamedTuple

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit.data import IGNORE_INDEX, PAD, TASKS, TOKENIZER, Task, _check_n_seed, get_task

USER, SEP, ASSISTANT = "U:", " ", "A:"

#: The course's chat format as a Jinja chat template (Hugging Face's ``chat_template``).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    f"{USER}{{{{ message['content'] }}}}{SEP}"
    "{% elif message['role'] == 'assistant' %}"
    f"{ASSISTANT}{{% generation %}}{{{{ message['content'] }}}}{{{{ eos_token }}}}"
    "{% endgeneration %}"
    "{% else %}"
    "{{ raise_exception('the course chat template has the roles user and assistant, not '"
    " + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{ASSISTANT}{{% endif %}}"
)

SPLITS = ("train", "eval")


class ChatBatch(NamedTuple):
    """One padded batch, Hugging Face's layout: ``model(**batch._asdict())`` works.

    Attributes:
        input_ids: (B, T) int64, right-padded with ``<pad>``.
        labels: (B, T) int64, ``input_ids`` where the loss applies (the answer and its
            ``<eos>``), ``IGNORE_INDEX`` elsewhere. Not shifted: the model shifts.
        attention_mask: (B, T) int64, 1 on real tokens, 0 on padding.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face labels -> labkit's: ``out[:, t] = labels[:, t + 1]`` (the token that
    position t predicts), ``IGNORE_INDEX`` at the last position. Then
    ``labkit.train.lm_loss(model(input_ids), shift_labels(labels))`` is the loss a
    transformers model computes from ``labels``."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def encode_chat(pairs: list[tuple[str, str]]) -> ChatBatch:
    """``(prompt, answer)`` pairs (prompts as :meth:`ChatTask.prompt` writes them) -> a
    :class:`ChatBatch`: ``<bos>`` + prompt + answer + ``<eos>``, loss on answer + ``<eos>``."""
    rows = [(TOKENIZER.encode(p, bos=True), TOKENIZER.encode(a, eos=True)) for p, a in pairs]
    T = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        labels[i, len(p):n] = torch.tensor(a)
        mask[i, :n] = 1
    return ChatBatch(ids, labels, mask)


def show(batch: ChatBatch, row: int = 0) -> str:
    """Two aligned lines: what the model sees and what the loss sees (``.`` = no loss; a
    space shows as ``␣``).

    >>> print(show(chat_task().chat_batch(1, seed=0)))      # doctest: +SKIP
    model sees: <bos> U : t o o v s r c ␣ A : c r s v o o t <eos>
    loss sees :   .   . . . . . . . . . . . . c r s v o o t <eos>
    """
    n = int(batch.attention_mask[row].sum())  # the padding is left out
    seen, loss = [], []
    for t, lab in zip(batch.input_ids[row, :n].tolist(), batch.labels[row, :n].tolist(),
                      strict=True):
        tok = TOKENIZER.decode([t], skip_special=False).replace(" ", "\u2423")  # ␣
        shown = TOKENIZER.decode([lab], skip_special=False) if lab != IGNORE_INDEX else "."
        w = max(len(tok), len(shown))
        seen.append(tok.center(w))
        loss.append(shown.center(w))
    return f"model sees: {' '.join(seen)}\nloss sees : {' '.join(loss)}"


@dataclass(frozen=True)
class ChatTask(Task):
    """A :class:`labkit.data.Task` in the chat format: prompt ``U:<word> A:``.

    The answer is the base task's (``reverse`` by default: ``U:hello A:olleh``).
    ``sample`` draws held-out words by default (what :func:`labkit.train.evaluate` calls);
    ``batch`` and ``chat_batch`` draw training words (what training calls).

    Attributes (besides :class:`~labkit.data.Task`'s):
        eval_buckets: one word in this many is held out (by its SHA-256).
    """

    eval_buckets: int = 5

    def prompt(self, word: str) -> str:
        return f"{USER}{word}{SEP}{ASSISTANT}"

    @property
    def max_seq_len(self) -> int:
        """Longest exchange: <bos> + U: + word + ' A:' + answer + <eos>."""
        return 1 + len(USER) + self.max_len + len(SEP) + len(ASSISTANT) + self.max_answer_len

    def split_of(self, word: str) -> str:
        """``"eval"`` for held-out words, ``"train"`` for the rest (the same everywhere)."""
        bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        return "eval" if bucket % self.eval_buckets == 0 else "train"

    def messages(self, prompt: str, answer: str | None = None) -> list[dict[str, str]]:
        """A pair as chat messages, for ``tokenizer.apply_chat_template``; without
        ``answer``, the user turn only (then ask for ``add_generation_prompt=True``)."""
        word = prompt.removeprefix(USER).removesuffix(SEP + ASSISTANT)
        msgs = [{"role": "user", "content": word}]
        return msgs if answer is None else msgs + [{"role": "assistant", "content": answer}]

    def sample(self, n: int, seed: int, split: str = "eval") -> list[tuple[str, str]]:
        """``n`` seeded ``(prompt, answer)`` pairs of one split (held-out by default)."""
        _check_n_seed(n, seed)
        return self._draw(n, random.Random(f"{self.name}/{split}/{seed}"), split)

    def _draw(self, n: int, rng: random.Random, split: str = "train") -> list[tuple[str, str]]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        pairs = []
        while len(pairs) < n:
            word = self._word(rng)
            if self.split_of(word) == split:
                pairs.append((self.prompt(word), self.answer(word)))
        return pairs

    def chat_batch(self, n: int, seed: int | None = None, rng: random.Random | None = None,
                   split: str = "train") -> ChatBatch:
        """A :class:`ChatBatch` of ``n`` examples (Hugging Face's label layout).

        Give ``seed`` for a fixed batch or ``rng`` to draw the next batch of a stream, as in
        :meth:`labkit.data.Task.batch` (which gives the same examples, labels shifted).
        """
        return encode_chat(self._draw(n, self._stream(n, seed, rng), split))

    def conversations(self, n: int, seed: int | None = None, rng: random.Random | None = None,
                      split: str = "train") -> list[list[dict[str, str]]]:
        """The examples :meth:`chat_batch` would encode, as chat messages (user word, then
        assistant answer) for a tokenizer's ``apply_chat_template``.

        With the same ``seed`` or ``rng`` state the draws are the same as
        :meth:`chat_batch`'s and :meth:`batch`'s, so a loop that renders them with a Hugging
        Face tokenizer trains on the words a labkit loop trains on.
        """
        return [self.messages(p, a) for p, a in self._draw(n, self._stream(n, seed, rng), split)]

    def _stream(self, n, seed: int | None, rng: random.Random | None) -> random.Random:
        """``rng``, or the fixed stream of ``seed`` (the one :meth:`Task.batch` uses)."""
        if (seed is None) == (rng is None):
            raise ValueError("give exactly one of seed= (a fixed batch) or rng= (a stream)")
        if rng is None:
            _check_n_seed(n, seed)
            return random.Random(f"{self.name}/batch/{seed}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return rng


def chat_task(base: str | Task = "reverse", eval_buckets: int = 5) -> ChatTask:
    """The chat version of a task of :data:`labkit.data.TASKS` (named ``chat-<base>``).

    Raises:
        ValueError: unknown base task (the message lists them), or ``eval_buckets < 2``.
    """
    t = get_task(base)
    if not isinstance(eval_buckets, int) or isinstance(eval_buckets, bool) or eval_buckets < 2:
        raise ValueError(f"eval_buckets must be an int >= 2 (one word in eval_buckets is held "
                         f"out), got {eval_buckets!r}")
    return ChatTask(f"chat-{t.name}", USER[0], t.transform,
                    f"chat: the user sends a word, the assistant answers: {t.description}",
                    t.min_len, t.max_len, t.alphabet, t.must_contain, eval_buckets)


CHAT_TASKS: dict[str, ChatTask] = {f"chat-{name}": chat_task(name) for name in TASKS}
