"""Lesson 12's checks (labkit.checks.lesson12_failures and lesson12_numerics): each passes the
reference fix, names each classic wrong fix, lets an unsolved stub's NotImplementedError
through; and the lesson's own exercise cells pass, while their student stubs do not."""

from __future__ import annotations

import math
from pathlib import Path

from labkit._deps import torch

import nbformat
import pytest

from labkit import checks, classroom, quant

LESSON = Path(__file__).resolve().parent.parent / "lessons" / "12_failure_lab.ipynb"


def _stub(*args):
    raise NotImplementedError("Exercise x: see the hint above")


def _merged(W, A, B, s):
    return quant.dequantize_4bit(*quant.quantize_4bit(W)) + s * B @ A


def _q(w):
    return quant.dequantize_4bit(*quant.quantize_4bit(w))


def _scaler(grads, scale):
    if not all(torch.isfinite(g).all() for g in grads):
        return None, scale / 2
    return [g.float() / scale for g in grads], scale


def _adapter(sd, name):
    tag = f".{name}."
    return {k.replace(tag, "."): v for k, v in sd.items() if "lora_" in k and tag in k}


def _dequant(sizes, needs, ckpt):
    return sum(n * (1 + g + ckpt) for n, g in zip(sizes, needs, strict=True))


def _scale(a, r, rs):
    return a / math.sqrt(r) if rs else a / r


_ATTN = ["q_proj", "v_proj"]

# check -> (reference fix, {mistake: (wrong fix, words its message must hold)})
CASES = {
    "check_inputs_require_grad": (lambda o: o.requires_grad_(True), {
        "unchanged": (lambda o: o, "element 0 of tensors does not require grad"),
        "detached": (lambda o: o.detach(), "still does not require grad"),
        "flag read, not set": (lambda o: o.requires_grad, "with the underscore"),
        "set in place, no return": (lambda o: [o.requires_grad_(True)] and None,
                                    "return the tensor"),
        "values changed": (lambda o: (2 * o).requires_grad_(True), "the values changed"),
        "not a tensor": (lambda o: o.tolist(), "got list"),
    }),
    "check_adapter_state_dict": (_adapter, {
        "filtered twice (2023)": (
            lambda sd, n: {k: v for k, v in _adapter(sd, n).items() if n in k},
            "your dict is empty"),
        "base weights saved": (lambda sd, n: {**_adapter(sd, n), **{
            k: v for k, v in sd.items() if "lora_" not in k}}, "frozen base tensors"),
        "adapter name kept": (
            lambda sd, n: {k: v for k, v in sd.items() if "lora_" in k and f".{n}." in k},
            "keep the adapter name"),
        "every adapter": (
            lambda sd, n: {k.replace(f".{n}.", "."): v for k, v in sd.items() if "lora_" in k},
            "tensors: keep only the keys"),
        "lora_A only": (
            lambda sd, n: {k: v for k, v in _adapter(sd, n).items() if "lora_A" in k},
            "are missing"),
        "values changed": (lambda sd, n: {k: 2 * v for k, v in _adapter(sd, n).items()},
                           "is not the model's"),
        "a list": (lambda sd, n: list(_adapter(sd, n)), "got list"),
    }),
    "check_head_config": (lambda h: dict(r=4, lora_alpha=8, target_modules=_ATTN,
                                         task_type="SEQ_CLS"), {
        "no task_type": (lambda h: dict(r=4, target_modules=_ATTN), "does not train"),
        "LoRA on the head": (lambda h: dict(r=4, target_modules=[*_ATTN, h]), "LoRA on the head"),
        "append() returns None": (  # PEFT #577: modules_to_save=targets.append("score")
            lambda h: dict(r=4, target_modules=(t := list(_ATTN)),
                           modules_to_save=t.append(h)), "LoRA on the head"),
        "unknown argument": (lambda h: dict(rank=4, modules_to_save=[h]), "LoraConfig(**your"),
        "not a dict": (lambda h: ["SEQ_CLS"], "return a dict"),
        "head name hard-coded": (lambda h: dict(r=4, target_modules=_ATTN,
                                                modules_to_save=["score"]),
                                 "the new head 'classifier' does not train"),
    }),
    "check_alpha_scale": (lambda A, B, a, r, rs: (A, B / _scale(a, r, rs)), {
        "unchanged": (lambda A, B, a, r, rs: (A, B), "the factors are unchanged"),
        "both divided": (lambda A, B, a, r, rs: (A / _scale(a, r, rs), B / _scale(a, r, rs)),
                         "divided both factors"),
        "multiplied": (lambda A, B, a, r, rs: (A, B * _scale(a, r, rs)), "you multiplied"),
        "rsLoRA ignored": (lambda A, B, a, r, rs: (A, B * r / a), "other convention"),
        "swapped": (lambda A, B, a, r, rs: (B, A), "must keep its shape"),
        "other factor": (lambda A, B, a, r, rs: (A, B / 3), "times the update"),
    }),
    "check_qlora_merge": (_merged, {
        "onto the original W": (lambda W, A, B, s: W + s * B @ A, "onto the original W"),
        "no scale": (lambda W, A, B, s: _q(W) + B @ A, "lacks its scale"),
        "requantized": (lambda W, A, B, s: _q(_merged(W, A, B, s)), "quantized the merged"),
        "bf16": (lambda W, A, B, s: _merged(W, A, B, s).bfloat16(), "in float32"),
        "transposed": (lambda W, A, B, s: _merged(W, A, B, s).T, "has shape"),
    }),
    "check_loss_scaler": (_scaler, {
        "divided in fp16": (lambda g, s: _scaler(g, s) if _scaler(g, s)[0] is None else
                            ([x / s for x in g], s), "not float32"),
        "never skips": (lambda g, s: ([x.float() / s for x in g], s), "went through"),
        "isinf only": (lambda g, s: (None, s / 2) if any(torch.isinf(x).any() for x in g)
                       else ([x.float() / s for x in g], s), "NaN gradient went through"),
        "scale kept": (lambda g, s: (None, s) if _scaler(g, s)[0] is None else _scaler(g, s),
                       "halve it"),
        "multiplied": (lambda g, s: _scaler(g, s) if _scaler(g, s)[0] is None else
                       ([x.float() * s for x in g], s), "you multiplied"),
        "not divided": (lambda g, s: _scaler(g, s) if _scaler(g, s)[0] is None else
                        ([x.float() for x in g], s), "not divided"),
    }),
    "check_dequant_count": (_dequant, {
        "forward only": (lambda s, g, c: sum(s), "forward pass only"),
        "backward everywhere": (lambda s, g, c: _dequant(s, [True] * len(s), c),
                                "only layers whose input needs a gradient"),
        "recompute forgotten": (lambda s, g, c: _dequant(s, g, False), "recomputes"),
        "bytes in bf16": (lambda s, g, c: 2 * _dequant(s, g, c), "twice the count"),
        "a float": (lambda s, g, c: float(_dequant(s, g, c)) + 0.5, "expected"),
        "None": (lambda s, g, c: None, "forget `return`"),
    }),
    "check_fits_on_card": (lambda p, c, m: p + c <= m * 2**20, {
        "MB": (lambda p, c, m: p + c <= m * 1e6, "MiB are 2^20 bytes"),
        "16e9": (lambda p, c, m: p + c <= 16e9, "not the 16e9 of its name"),
        "16 GiB": (lambda p, c, m: p + c <= 16 * 2**30, "not 16 GiB"),
        "no context": (lambda p, c, m: p <= m * 2**20, "CUDA context"),
        "strict": (lambda p, c, m: p + c < m * 2**20, "compare with <="),
        "not a bool": (lambda p, c, m: int(p + c <= m * 2**20), "True or False"),
    }),
}
WRONG = [(c, m) for c, (_, mistakes) in CASES.items() for m in mistakes]


@pytest.mark.parametrize("check", CASES)
def test_reference_fix_passes_and_stub_propagates(check, capsys):
    fn = getattr(checks, check)
    res = fn(CASES[check][0])
    assert res.passed, res.message
    assert capsys.readouterr().out == res.line + "\n"
    with pytest.raises(NotImplementedError, match="see the hint"):
        fn(_stub)
    assert not fn(3).passed  # a value, not a function


@pytest.mark.parametrize("check, mistake", WRONG, ids=[f"{c[6:]}-{m}" for c, m in WRONG])
def test_each_classic_mistake_is_named(check, mistake, capsys):
    wrong, words = CASES[check][1][mistake]
    res = getattr(checks, check)(wrong)
    assert not res.passed
    assert words in res.message, res.message
    out = capsys.readouterr().out
    assert out.startswith(f"CHECK {res.name}: FAIL - ") and out.count("\n") == 1


def test_lesson_exercises_pass_and_their_student_stubs_fail():
    """Run each exercise cell of lesson 12, instructor and student version, and its check."""
    teacher = nbformat.read(LESSON, as_version=4)
    student = classroom.student_notebook(teacher, LESSON.name)
    exercises = classroom.exercises(teacher, LESSON.name)
    calls = classroom.exercise_checks(LESSON).checks
    assert len(exercises) == 8
    for ex in exercises:
        (call,) = calls[ex.grade_id]
        check = getattr(checks, call.check)
        for nb, solved in ((teacher, True), (student, False)):
            ns = {"torch": torch, "math": math, "quant": quant}
            exec(nb.cells[ex.index].source, ns)
            if solved:
                assert check(ns[call.function]).passed, ex.grade_id
            else:
                with pytest.raises(NotImplementedError, match=f"Exercise {ex.grade_id}"):
                    check(ns[call.function])
