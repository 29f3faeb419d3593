"""labkit.train checkpoint / resume: an interrupted run resumed ends where an uninterrupted
run ends (bitwise on the CPU), mismatched checkpoints are refused, nothing is pickled."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from labkit import lora, models, train
from labkit.env import seed_everything

SMALL = models.ModelConfig(128, 64, 128, 1, 2, 1, max_seq_len=32, name="test-small")
KW = dict(steps=8, lr=3e-3, batch_size=8, eval_every=4, eval_n=8, seed=3, progress=False)


def lora_model(seed=0, r=4, dropout=0.1):
    seed_everything(seed)
    model = models.build(SMALL)
    # dropout > 0 so that torch's RNG state matters to the trajectory too
    lora.add_lora(model, ["q_proj", "v_proj"], r=r, alpha=8, dropout=dropout)
    return model


def trainable_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, optimizer):
    full_model = lora_model()
    full = train.train(full_model, "shift", optimizer=optimizer, **KW)

    model = lora_model()
    monkeypatch.setenv(train.FAIL_ENV, "6")
    with pytest.raises(RuntimeError, match="injected fault at step 6"):
        train.train(model, "shift", optimizer=optimizer, checkpoint_dir=tmp_path,
                    checkpoint_every=2, **KW)
    assert json.loads((tmp_path / train.CKPT_JSON).read_text())["step"] == 4
    monkeypatch.delenv(train.FAIL_ENV)

    model = lora_model()  # a fresh process: the same base, but adapters and RNG elsewhere
    torch.manual_seed(123)
    with torch.no_grad():
        for p in trainable_params(model):
            p.normal_()
    h = train.train(model, "shift", optimizer=optimizer, checkpoint_dir=tmp_path,
                    checkpoint_every=2, resume=True, **KW)
    assert h.step == full.step == list(range(1, 9))
    assert h.loss == full.loss and h.lr == full.lr
    assert h.eval_step == full.eval_step == [0, 4, 8] and h.eval_acc == full.eval_acc
    a, b = trainable(model), trainable(full_model)
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the frozen base is untouched by loading
    ref = lora_model().state_dict()
    for k, v in model.state_dict().items():
        if k not in a:
            assert torch.equal(v, ref[k]), k


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    model = lora_model()
    train.train(model, "shift", checkpoint_dir=tmp_path, **KW)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted([train.CKPT_TENSORS, train.CKPT_JSON])
    tensors = load_file(str(tmp_path / train.CKPT_TENSORS))
    names = {k.split("/", 1)[1] for k in tensors if k.startswith("param/")}
    assert names == set(trainable(model))  # adapters only, not the frozen base
    n_opt = sum(k.startswith("optim/") for k in tensors)
    assert n_opt == 3 * len(names)  # AdamW: step, exp_avg, exp_avg_sq per parameter
    for n, p in trainable(model).items():
        assert torch.equal(tensors[f"param/{n}"], p)
    meta = json.loads((tmp_path / train.CKPT_JSON).read_text())
    assert meta["step"] == 8 and meta["history"]["loss"] and meta["fingerprint"]["seed"] == 3


def test_resume_with_a_mismatched_model_or_run_is_refused(tmp_path):
    train.train(lora_model(), "shift", checkpoint_dir=tmp_path, checkpoint_every=4, **KW)
    with pytest.raises(ValueError, match="trainable parameters differ"):
        train.train(lora_model(r=2), "shift", checkpoint_dir=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match="task: checkpoint 'shift' vs this run 'reverse'"):
        train.train(lora_model(), "reverse", checkpoint_dir=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match="the checkpoint is at step 8, past steps=4"):
        train.train(lora_model(), "shift", checkpoint_dir=tmp_path, resume=True,
                    **{**KW, "steps": 4})
    with pytest.raises(ValueError, match="batch_size"):
        train.train(lora_model(), "shift", checkpoint_dir=tmp_path, resume=True,
                    **{**KW, "batch_size": 4})


def test_bad_checkpoint_arguments(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        train.train(lora_model(), "shift", checkpoint_dir=tmp_path / "none", resume=True, **KW)
    with pytest.raises(ValueError, match="need checkpoint_dir"):
        train.train(lora_model(), "shift", resume=True, **KW)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        train.train(lora_model(), "shift", checkpoint_dir=tmp_path, checkpoint_every=0, **KW)
    monkeypatch.setenv(train.FAIL_ENV, "soon")
    with pytest.raises(ValueError, match="LABKIT_FAIL_AT_STEP must be an integer"):
        train.train(lora_model(), "shift", **KW)
