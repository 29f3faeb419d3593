"""LoRA+ (labkit.train.loraplus, "adamw_loraplus") against PEFT's create_loraplus_optimizer on
the course model: the same param groups and learning rates, the same training; and the loop
keeps each group's ratio to the scheduled lr (it used to overwrite every group's lr).

Tolerances: see tests/lora_variants_common.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from lora_variants_common import (
    FILTERS,
    PEFT_PREFIX,
    TARGETS,
    TOL,
    copy_adapters,
    course_model,
    deepcopy,
    logits,
    run,
)
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from labkit import lora as L
from labkit import train

pytestmark = [pytest.mark.filterwarnings(f) for f in FILTERS]
RATIO = 8.0


@pytest.fixture(scope="module")
def base():
    return course_model()


def pair(base, targets=TARGETS, **kw):
    mine = deepcopy(base)
    L.add_lora(mine, targets, r=4, alpha=8, **kw)
    pm = get_peft_model(deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                   use_dora=kw.get("use_dora", False)))
    copy_adapters(mine, pm)
    return mine, pm


def peft_factory(pm, ratio=RATIO):
    """PEFT's optimizer as a labkit factory: the same groups, built from the PEFT model."""
    def factory(params, lr, weight_decay):
        return create_loraplus_optimizer(pm, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                         loraplus_weight_decay=weight_decay)
    return factory


def groups(opt, model, prefix=""):
    names = {id(p): n.removeprefix(prefix).replace("magnitude_vector.default.weight",
                                                     "magnitude_vector.default")
             for n, p in model.named_parameters()}  # PEFT's DoRA m is a module's .weight
    return [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"])
            for g in opt.param_groups]


@pytest.mark.parametrize("targets, dora", [(TARGETS, False), (TARGETS + ["embed_tokens"], False),
                                           (TARGETS, True)])
def test_same_param_groups_and_rates_as_peft(base, targets, dora):
    mine, pm = pair(base, targets, use_dora=dora)
    ours = train.make_optimizer(mine, train.loraplus(ratio=RATIO), lr=2e-3, weight_decay=0.01)
    theirs = peft_factory(pm)(None, 2e-3, 0.01)
    got, want = groups(ours, mine), groups(theirs, pm, PEFT_PREFIX)
    assert got == want
    assert [lr for _, lr, _ in got] == [2e-3, 1e-6, 2e-3 * RATIO, 2e-3 * RATIO]
    assert all(".lora_B." in n or "magnitude" in n for n in got[2][0])  # DoRA's m: B's rate
    assert all(".lora_A." in n for n in got[0][0]) and got[0][0]
    assert bool(got[1][0]) == ("embed_tokens" in targets)


def test_trains_like_peft_and_b_moves_faster(base):
    mine, pm = pair(base)
    plain = deepcopy(mine)
    h1 = run(mine, optimizer=train.loraplus(ratio=RATIO))
    h2 = run(pm, optimizer=peft_factory(pm))
    assert h1.loss == pytest.approx(h2.loss, rel=1e-5)
    torch.testing.assert_close(logits(mine), logits(pm), **TOL)
    run(plain)  # plain AdamW at the same lr: after step 1 (B = 0, so A's gradient is 0) ...
    b_plus = L.get_adapter_params(mine)["layers.0.self_attn.q_proj.lora_B.default.weight"]
    b_plain = L.get_adapter_params(plain)["layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert b_plus.abs().max() > 4 * b_plain.abs().max()  # ... B took steps RATIO times larger
    assert "adamw_loraplus" in train.OPTIMIZERS
    assert train.OPTIMIZERS["adamw_loraplus"].loraplus_ratio == 16.0  # the paper's 2^4


def test_loop_keeps_each_groups_ratio_under_the_schedule(base):
    """train() scales every group by the schedule; before the fix B's rate was overwritten
    by the base rate, and LoRA+ silently became plain AdamW."""
    mine, _ = pair(base)
    seen = []

    def factory(params, lr, weight_decay, named_params):
        opt = train.loraplus(ratio=RATIO)(params, lr, weight_decay, named_params)
        step = opt.step

        def recording_step(*a, **k):
            seen.append([g["lr"] for g in opt.param_groups])
            return step(*a, **k)

        opt.step = recording_step
        return opt

    h = run(mine, steps=6, lr=1e-2, optimizer=factory, warmup_steps=2, schedule="cosine")
    assert len(seen) == 6
    for lrs, cur in zip(seen, h.lr, strict=True):
        assert lrs == pytest.approx([cur, cur * 1e-6 / 1e-2, cur * RATIO, cur * RATIO])
    assert h.lr[0] == pytest.approx(5e-3) and h.lr[1] == pytest.approx(1e-2)
    assert h.lr[3] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))


def test_resume_keeps_the_ratio(base, tmp_path):
    runs = []
    for resume in (False, True):
        mine, _ = pair(base)
        opt = train.loraplus(ratio=RATIO)
        if resume:
            run(mine, steps=2, optimizer=opt, checkpoint_dir=tmp_path)
            run(mine, steps=4, optimizer=opt, checkpoint_dir=tmp_path, resume=True)
        else:
            run(mine, steps=4, optimizer=opt)
        runs.append(logits(mine))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-6, rtol=1e-6)


def test_bad_ratio():
    with pytest.raises(ValueError, match="ratio must be a positive number"):
        train.loraplus(ratio=0)
