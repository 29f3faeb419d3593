"""Lesson 06's predict-then-measure exercise: the gradient bytes of a LoRA step.

The learner writes ``f(cfg, r, targets) -> bytes``: the bytes of the gradients one LoRA
training step holds, for adapters of rank ``r`` (float32) on the ``targets`` linears of
every block of a model with config ``cfg``. :func:`check_gradient_bytes` does not compare
with a formula: it *measures* a real step with :func:`labkit.memory.measure` on the course's
pretrained model (two settings) and says how far the prediction is, and why, when the gap
matches a classic mistake (the frozen weight counted, 2 bytes instead of 4, one layer
instead of all, the optimizer's moments added, bits instead of bytes).

Imports: ``labkit.checks.harness``; ``labkit.memory``, ``labkit.lora`` and ``labkit.models``
(torch) when the check runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from labkit.checks import harness as H  # the shared harness: CheckResult, _call, ...

#: (layers, rank, targets) of the measured steps: the course's pretrained model (2 blocks),
#: then the same shape with 3 blocks (random weights), so that no two mistakes coincide.
SETTINGS = ((None, 8, ("q_proj", "v_proj")),
            (3, 4, ("k_proj", "o_proj", "up_proj", "down_proj")))


def _shapes(cfg) -> dict[str, tuple[int, int]]:
    """(out, in) of each block linear, from the config."""
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.kv_dim
    return {"q_proj": (d, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, d),
            "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}


def _mistakes(cfg, r: int, targets) -> list[tuple[str, float]]:
    """What a classic mistake would predict, with the reason to tell the learner."""
    sh = _shapes(cfg)
    adapters = sum(r * (o + i) for o, i in (sh[t] for t in targets))
    frozen = sum(o * i for o, i in (sh[t] for t in targets))
    L = cfg.n_layers
    return [
        ("that includes the frozen weights d x k; they do not train, so they get no gradient",
         4 * L * (adapters + frozen)),
        ("that is the frozen weights' bytes; only the adapters A (r x k) and B (d x r) train",
         4 * L * frozen),
        ("2 bytes per number: the adapters train in float32 here (4 bytes), and a gradient "
         "has its parameter's dtype", 2 * L * adapters),
        ("that is one block; every block has its own adapters: multiply by n_layers",
         4 * adapters),
        ("that adds AdamW's two moments; the question is the gradients only (one number per "
         "trainable number)", 3 * 4 * L * adapters),
        ("that counts bits; divide by 8 for bytes", 32 * L * adapters),
        ("only A (r x k) is counted; B (d x r) trains too",
         4 * L * sum(r * i for _, i in (sh[t] for t in targets))),
    ]


def _measured(layers: int | None, r: int, targets) -> tuple[object, int]:
    """A model's config and the gradient bytes ``memory.measure`` counts in one LoRA step."""
    from labkit import data, lora, memory, models  # torch: only when the check runs

    model = models.load_pretrained().model
    if layers is not None:
        model = models.build(model.config.replace(n_layers=layers))
    lora.add_lora(model, list(targets), r=r, alpha=2 * r)
    batch = data.get_task("shift").batch(4, seed=0)
    return model.config, memory.measure(model, batch, "sgd").gradients


def check_gradient_bytes(fn: Callable) -> H.CheckResult:
    """Predict-then-measure: ``fn(cfg, r, targets)`` against measured LoRA steps.

    A wrong prediction is reported with the measured bytes and the gap; where the learner's
    numbers match one classic mistake on every measured setting, the message names it.
    """
    name = "gradient_bytes"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    wrong = []  # (cfg, r, targets, got, want) of the settings the prediction misses
    for layers, r, targets in SETTINGS:
        cfg, want = _measured(layers, r, targets)
        try:
            got = H._call(fn, cfg, r, list(targets))
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} for r={r} on "
                                          f"{', '.join(targets)}")
        if (bad := H._not_a_number(name, got, "a number of bytes")) is not None:
            return bad
        if not math.isclose(got, want, rel_tol=1e-9):
            wrong.append((cfg, r, targets, got, want))
    if not wrong:
        return H._report(name, True, f"equal to memory.measure on {len(SETTINGS)} LoRA steps")
    cfg, r, targets, got, want = wrong[0]
    off = (f"you predicted {got:,.0f} bytes, memory.measure counted {want:,} "
           f"({100 * (got / want - 1):+.1f} %) for {cfg.n_layers} blocks, r={r} on "
           f"{', '.join(targets)}")
    per_setting = [_mistakes(c, rr, t) for c, rr, t, _, _ in wrong]
    for i, (why, _) in enumerate(per_setting[0]):
        if all(math.isclose(w[3], alts[i][1], rel_tol=1e-9)
               for w, alts in zip(wrong, per_setting, strict=True)):
            return H._report(name, False, f"{off}: {why}")
    return H._report(name, False, f"{off}. Each adapter on a d x k linear trains r * (d + k) "
                                  "float32 numbers, in every block")
