"""What a run measures: the loss of a batch, exact-match accuracy by greedy generation, and
the :class:`History` that records both, ready to plot.

:func:`lm_loss` is the cross-entropy over the answer tokens (labels not ``IGNORE_INDEX``),
in fp32 whatever the logits' dtype. :func:`evaluate` counts an example as right only if the
generated text up to ``<eos>`` equals the answer. Both forward passes, the training step's
and the evaluation's, run under :func:`_autocast` (``dtype=torch.bfloat16``, or ``float16``
on CUDA; ``None`` or ``float32`` is plain fp32).

Imports: torch, :mod:`labkit.data` (tasks, tokenizer) and :mod:`labkit.generate`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn.functional as F

from labkit.data import IGNORE_INDEX, TOKENIZER, Task, get_task
from labkit.generate import greedy

#: Seed of the default evaluation sample; training streams are seeded separately, so the
#: evaluation words are (up to chance collisions of short words) unseen in training.
EVAL_SEED = 10_000


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("float16 training needs a CUDA GPU; on the CPU use torch.bfloat16")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, float32, bfloat16 or float16, got {dtype}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
            ) -> torch.Tensor:
    """Cross-entropy over the positions whose label is not ``IGNORE_INDEX``: their mean, or
    with ``reduction="sum"`` their sum (what a data-parallel rank contributes, see
    :func:`train`).

    logits (B, T, V), labels (B, T) -> scalar. Computed in fp32 whatever the logits' dtype.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str | Task, n: int = 200, seed: int = EVAL_SEED,
             dtype: torch.dtype | None = None, return_outputs: bool = False):
    """Exact-match accuracy of greedy generation on ``n`` fresh examples of ``task``.

    An example counts only if the generated text up to ``<eos>`` equals the answer and the
    model did write ``<eos>`` (within answer length + 1 tokens).

    Returns:
        accuracy in [0, 1]; with ``return_outputs``, ``(accuracy, rows)`` where rows are
        ``(prompt, answer, generated)`` strings.
    """
    task = get_task(task)
    pairs = task.sample(n, seed)
    prompts = [TOKENIZER.encode(p, bos=True) for p, _ in pairs]
    device = next(model.parameters()).device
    with _autocast(device, dtype):
        outs = greedy(model, prompts, max_new_tokens=task.max_answer_len)
    rows, correct = [], 0
    for (p, a), toks in zip(pairs, outs, strict=True):
        ok = toks == TOKENIZER.encode(a, eos=True)  # ids compared: unused ids just fail
        correct += ok
        if return_outputs:
            rows.append((p, a, _safe_decode(toks)))
    acc = correct / n
    return (acc, rows) if return_outputs else acc


def _safe_decode(toks: list[int]) -> str:
    return "".join(TOKENIZER.decode([t], skip_special=False) if t < 3 or 32 <= t < 127 else "?"
                   for t in toks)


@dataclass
class History:
    """What :func:`train` did, ready to plot: ``plt.plot(h.step, h.loss)``,
    ``plt.plot(h.eval_step, h.eval_acc["shift"])``. ``h["loss"]`` works too."""

    task: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_acc: dict[str, list[float]] = field(default_factory=dict)
    eval_time_s: list[float] = field(default_factory=list)  # seconds since start
    wall_s: float = 0.0
    stopped_early: bool = False

    def __getitem__(self, key: str):
        return getattr(self, key)

    @property
    def acc(self) -> list[float]:
        """Evaluation accuracies on the training task."""
        return self.eval_acc.get(self.task, [])

    @property
    def final_acc(self) -> float | None:
        return self.acc[-1] if self.acc else None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
