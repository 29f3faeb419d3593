"""Greedy generation: what the model actually writes, token by token.

Greedy decoding appends the most likely next token (argmax of the last position's logits)
until ``<eos>`` or a token budget. There is no KV cache: each step runs the whole sequence
again. For the course's 20-token sequences that costs little and keeps the code obvious.
Prompts of different lengths are run in groups of equal length, so no padding or attention
mask is needed and a batch gives exactly what one-at-a-time generation gives.
"""

from __future__ import annotations

from collections import defaultdict

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit.data import EOS, TOKENIZER


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int,
           eos_id: int = EOS, batch_size: int = 256) -> list[list[int]]:
    """Greedy continuations of token-id prompts.

    Args:
        model: maps (B, T) ids to (B, T, V) logits.
        prompts: one list of ids per prompt (any lengths, each non-empty).
        max_new_tokens: most tokens to add per prompt.
        eos_id: stop a row once it writes this token (it is kept in the output).
        batch_size: most prompts per forward pass.

    Returns:
        The new tokens of each prompt, in input order (up to and including ``<eos>``).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start with <bos>)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                rows = idx[s:s + batch_size]
                ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
                done = torch.zeros(len(rows), dtype=torch.bool, device=device)
                new = []
                for _ in range(max_new_tokens):
                    nxt = model(ids)[:, -1].argmax(-1)
                    new.append(nxt)
                    done |= nxt == eos_id
                    if done.all():
                        break
                    ids = torch.cat([ids, nxt[:, None]], dim=1)
                new = torch.stack(new, dim=1).tolist()
                for r, toks in zip(rows, new, strict=True):
                    out[r] = toks[:toks.index(eos_id) + 1] if eos_id in toks else toks
    finally:
        model.train(was_training)
    return out


def complete(model: torch.nn.Module, prompts: str | list[str], max_new_tokens: int = 12
             ) -> str | list[str]:
    """Text in, text out: the greedy answer to each prompt, ``<eos>`` removed.

    >>> complete(model, "R:hello=")   # doctest: +SKIP
    'olleh'
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    ids = [TOKENIZER.encode(t, bos=True) for t in texts]
    outs = [TOKENIZER.decode(toks) for toks in greedy(model, ids, max_new_tokens)]
    return outs[0] if single else outs
