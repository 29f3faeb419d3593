"""Generated items: numeric questions with fresh numbers from a seed, answered by labkit.

A lesson (or ``quiz.show(generated=...)``) adds them to the hand-written bank; the answer is
computed by labkit's own arithmetic (``labkit.lora``'s adapter parameter count,
``labkit.quant``'s bits per weight), so the quiz and the library can never disagree.

Imports: labkit.quiz.bank; labkit.lora and labkit.quant only inside the functions that need
them (they import torch, and ``import labkit.quiz`` must stay torch-free).
"""

from __future__ import annotations

import random

from labkit.quiz.bank import Item, parse_item


def _adapter_params(d: int, k: int, r: int) -> int:
    """``labkit.lora.adapter_params``: the one place that counts an adapter (torch-free)."""
    from labkit.lora.counts import adapter_params  # deferred: the bank loads without it

    return int(adapter_params(d, k, r))


def _bits_per_weight(quant_type: str, blocksize: int, double_quant: bool) -> float:
    """``labkit.quant.bits_per_weight``, imported only when needed (it needs torch)."""
    from labkit.quant import bits_per_weight  # deferred: labkit.quant imports torch

    return float(bits_per_weight(quant_type, blocksize, double_quant))


def generate_item(kind: str, seed: int) -> Item:
    """A numeric item with fresh numbers from ``seed``, its answer computed by labkit.

    Args:
        kind: ``"lora-count"`` (trainable parameters of a layer at rank r) or
            ``"model-bytes"`` (gigabytes of a model's weights in a format).
        seed: the same seed gives the same item (lessons fix it, so outputs are stable).
    """
    rng = random.Random(f"{kind}:{seed}")
    if kind == "lora-count":
        d, k = rng.choice([768, 1024, 2048, 4096, 5120]), rng.choice([512, 1024, 2048, 4096])
        r = rng.choice([4, 8, 16, 32, 64])
        right = _adapter_params(d, k, r)
        wrong = [
            (d * k, "That is the frozen weight W; it does not train."),
            (r * k, f"Only A (r x k); B (d x r = {d} x {r}) trains too."),
            (d * k + right, "That adds the frozen weight; only A and B train."),
        ]
        raw = dict(
            topic="lora-params",
            difficulty="medium",
            prompt=f"A {d} x {k} linear layer gets a rank-{r} LoRA adapter. "
            "How many parameters train?",
            answer=f"{right:,}",
            hint="The adapter is two matrices: B is d x r and A is r x k.",
            solution=[
                f"A is {r} x {k} = {r * k:,} entries.",
                f"B is {d} x {r} = {d * r:,} entries.",
                f"Together r * (d + k) = {right:,}, {100 * right / (d * k):.1f} % of d * k.",
            ],
            quick_check=f"r * (d + k) = {r} * {d + k:,} = {right:,}",
            mistakes=["counting only A", "counting the frozen weight", "multiplying d, k and r"],
        )
    elif kind == "model-bytes":
        params = rng.choice([1, 3, 7, 13, 34, 70])
        fmt = rng.choice(["bf16", "nf4", "nf4-dq"])
        bits = {
            "bf16": 16.0,
            "nf4": _bits_per_weight("nf4", 64, False),
            "nf4-dq": _bits_per_weight("nf4", 64, True),
        }[fmt]
        name = {
            "bf16": "bfloat16",
            "nf4": "NF4 (blocksize 64, fp32 scales)",
            "nf4-dq": "NF4 (blocksize 64) with double quantization",
        }[fmt]
        gb = lambda b: f"{params * b / 8:.2f} GB"  # noqa: E731  (billions of params * bytes)
        right = gb(bits)
        wrong = [
            (gb(bits * 8), "That counts bits as bytes; divide by 8."),
            (gb(4.0), "That is exactly 4 bits; the block scales cost extra."),
            (gb(32.0), "That is fp32, 4 bytes per weight."),
            (gb(16.0), "That is 16-bit, 2 bytes per weight."),
        ]
        raw = dict(
            topic="quantization",
            difficulty="hard",
            prompt=f"A {params}B-parameter model's weights are stored in {name}. "
            "How much memory do they take (1 GB = 10^9 bytes)?",
            answer=right,
            hint="Bytes = parameters x bits per weight / 8; count the scales in the bits.",
            solution=[
                f"The format costs {bits:.3f} bits per weight (labkit computes it).",
                f"{params} x 10^9 weights x {bits:.3f} / 8 bits per byte.",
                f"= {right}.",
            ],
            quick_check=f"{params} x {bits:.3f} / 8 = {right}",
            mistakes=[
                "bits taken as bytes",
                "4-bit counted as exactly half a byte",
                "forgetting the block scales",
            ],
        )
    else:
        raise ValueError(f"unknown generated kind {kind!r}; use 'lora-count' or 'model-bytes'")
    choices, texts = [{"text": raw["answer"]}], {raw["answer"]}
    for text, feedback in wrong:
        text = f"{text:,}" if isinstance(text, int) else text
        if text not in texts and len(choices) < 4:
            choices.append({"text": text, "feedback": feedback})
            texts.add(text)
    raw.update(id=f"gen-{kind}-{seed}", kind="choice", choices=choices)
    return parse_item(raw, "<generated>", generated=True)
