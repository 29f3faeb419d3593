"""FSDP on this torch (CPU, gloo) with LoRA and QLoRA: what works, what fails and why, what it
communicates. scripts/fsdp_probe.py runs once under torchrun; these tests pin the status the
scaling-out lesson states, against independent computations (one-process training,
parameter counts)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from labkit import lora, models, qlora, train
from labkit.data import get_task

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WORLD, STEPS, BATCH, WORD_LEN = 2, 4, 8, 6
#: As DDP (tests/test_distributed.py): the sharded run sums the same gradients in another
#: order than one process does, so only rounding separates them, a few fp32 ulp after 4 steps.
ATOL = 1e-6
FLATTEN_ERROR = ("ValueError: Must flatten tensors with uniform dtype but got torch.float32 "
                 "and torch.uint8")
NO_ACCELERATOR = "RuntimeError: FSDP needs a non-CPU accelerator device"
STATUS = {  # case -> None (works) or the start of its error
    "lora_fsdp2": None, "lora_fsdp1": None,
    "qlora_bnb_fsdp2": None, "qlora_bnb_fsdp1": FLATTEN_ERROR,
    "qlora_labkit_fsdp2": None, "qlora_labkit_fsdp1": FLATTEN_ERROR,
    "qlora_bnbf32_fsdp2": None, "qlora_bnbf32_fsdp1": None,
    "lora_fsdp1root": None, "lora_fsdp1nodevice": NO_ACCELERATOR,
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """One 2-process run of every case: (cases from the JSON, directory of adapters)."""
    out = tmp_path_factory.mktemp("fsdp")
    env = {k: v for k, v in os.environ.items() if k != train.FAIL_ENV}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "scripts" / "fsdp_probe.py"), "--out", str(out / "fsdp.json"),
           "--adapters-dir", str(out / "adapters")]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "fsdp.json").read_text())
    assert report["world_size"] == WORLD and report["steps"] == STEPS
    return report["cases"], out / "adapters"


def build(kind: str) -> torch.nn.Module:
    model = models.load_pretrained().model
    torch.manual_seed(0)
    if kind == "lora":
        lora.add_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
    else:
        qlora.prepare_qlora(model, ["q_proj", "v_proj"], r=4, alpha=8, backend=kind[6:])
    return model


@pytest.mark.timeout(180)
def test_which_cases_work_and_the_errors_of_those_that_do_not(probe):
    cases, adapters_dir = probe
    assert cases.keys() == STATUS.keys()
    for case, error in STATUS.items():
        got = cases[case]
        assert got["ranks_agree"], case  # both ranks saw the same outcome
        if error is None:
            assert got["works"] and got["error"] is None, (case, got["error"])
            assert (adapters_dir / f"{case}.safetensors").is_file(), case
        else:
            assert not got["works"] and got["error"].startswith(error), (case, got["error"])
            assert got["bytes_per_step"] is None and got["max_abs_diff_vs_single_process"] is None


@pytest.mark.timeout(180)
def test_working_cases_train_the_adapters_one_process_does(probe):
    cases, adapters_dir = probe
    for case, error in STATUS.items():
        if error is None:
            assert cases[case]["max_abs_diff_vs_single_process"] <= ATOL, case
    # independently of the probe's own reference: the LoRA run here, whole batch, one process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build("lora")
        task = dataclasses.replace(get_task("shift"), min_len=WORD_LEN, max_len=WORD_LEN)
        train.train(model, task, steps=STEPS, lr=3e-3, batch_size=BATCH, eval_n=8, seed=0,
                    optimizer="adamw", progress=False)
    finally:
        torch.set_num_threads(threads)
    ref = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for case in ("lora_fsdp2", "lora_fsdp1"):
        got = load_file(str(adapters_dir / f"{case}.safetensors"))
        assert got.keys() == ref.keys() and len(ref) == 8
        for k in ref:
            assert ref[k].abs().max() > 0, k  # B starts at 0: the adapters did move
            torch.testing.assert_close(got[k], ref[k], atol=ATOL, rtol=0, msg=f"{case} {k}")


@pytest.mark.timeout(180)
def test_gradient_clipping_sees_the_global_norm_under_fsdp1_and_fsdp2(probe):
    cases, _ = probe
    ref = cases["lora_fsdp2"]["grad_norms_single_process"]
    assert min(ref) > 1.0  # clipping (max norm 1) acts on every step: the check means something
    # FSDP2: the norm of sharded (DTensor) gradients is all-reduced by torch's clip_grad_norm_.
    # FSDP1 hands each rank a piece of a flat gradient, which torch's function would clip by
    # the piece's norm alone (with one unit of everything, rank 0 saw 2.90 and rank 1 1.16 of
    # a global 3.12, and the adapters drifted by 2.5e-4): labkit.train calls FSDP1's own
    # clip_grad_norm_ instead, which all-reduces the pieces first.
    for case in ("lora_fsdp2", "lora_fsdp1", "lora_fsdp1root"):
        assert len(cases[case]["grad_norms"]) == WORLD, case
        for rank_norms in cases[case]["grad_norms"]:
            assert rank_norms == pytest.approx(ref, rel=1e-5), case


def _nbytes(params, world: int = WORLD) -> int:
    # FSDP shards dim 0 (padded to a multiple of the world size); here nothing needs padding
    assert all(p.shape[0] % world == 0 for p in params)
    return sum(p.numel() * p.element_size() for p in params)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["lora", "qlora_bnb", "qlora_labkit"])
def test_bytes_per_step_from_parameter_counts(probe, kind):
    cases, _ = probe
    model = build(kind)
    named = list(model.named_parameters())
    layers = _nbytes([p for n, p in named if n.startswith("layers.")])
    root = _nbytes([p for n, p in named if not n.startswith("layers.")])
    trainable = [p for _, p in named if p.requires_grad]
    ddp = 4 * sum(p.numel() for p in trainable)  # DDP all-reduces fp32 adapter gradients
    assert ddp == _nbytes(trainable)
    # train's own bookkeeping under data parallelism: two fp32 scalars all-reduced per step
    # (the global count of answer tokens, and the loss for the history)
    book = 2 * 4
    # FSDP2: the root's parameters are gathered once (kept for backward), each layer's twice
    # (forward, then again for backward), frozen base included; only the adapters' gradients
    # are reduce-scattered, DDP's bytes exactly; clipping all-reduces one norm per tensor
    fsdp2 = {"all_gather": root + 2 * layers, "reduce_scatter": ddp,
             "all_reduce": 4 * len(trainable) + book, "broadcast": 0}
    # FSDP1 reduce-scatters the gradient of each whole flat parameter that holds an adapter,
    # frozen parts included (zeros); its clip_grad_norm_ all-reduces one fp32 scalar
    fsdp1 = {**fsdp2, "reduce_scatter": layers, "all_reduce": 4 + book}
    expected = {f"{kind}_fsdp2": fsdp2}
    if kind == "lora":
        expected["lora_fsdp1"] = fsdp1
        # one unit of everything: gathered once, every gradient reduce-scattered
        expected["lora_fsdp1root"] = {"all_gather": root + layers,
                                      "reduce_scatter": root + layers, "all_reduce": 4 + book,
                                      "broadcast": 0}
    if kind == "qlora_bnb":  # the float32-stored codes are the same bytes
        expected["qlora_bnbf32_fsdp2"] = fsdp2
        expected["qlora_bnbf32_fsdp1"] = fsdp1
    for case, want in expected.items():
        got = cases[case]
        # every step the same; train's loss all-reduce follows the optimizer step that ends
        # a step in the probe's count, so the scalars are checked over the run
        per_step = [{k: v for k, v in st.items() if k != "all_reduce"}
                    for st in got["bytes_each_step"]]
        assert per_step == [{k: v for k, v in want.items() if k != "all_reduce"}] * STEPS, case
        assert got["bytes_per_step"] == {**want, "total": sum(want.values())}, case
    # the lesson's point: FSDP moves the frozen base every step, DDP only the adapters' grads
    assert cases[f"{kind}_fsdp2"]["bytes_per_step"]["total"] > 100 * ddp


@pytest.mark.timeout(180)
def test_4bit_base_reaches_forward_as_a_plain_parameter_without_its_quant_state(probe):
    cases, _ = probe
    packed = [128 * 128 // 2, 1]  # layer 0's q_proj, 128 x 128 codes, two a byte, unsharded
    for case in ("qlora_bnb_fsdp2", "qlora_labkit_fsdp2"):
        assert cases[case]["base_weight_in_forward"] == {
            "type": "Parameter", "dtype": "uint8", "shape": packed, "has_quant_state": False}
    # FSDP1 hands it over as a plain tensor view of the flat parameter
    assert cases["qlora_bnbf32_fsdp1"]["base_weight_in_forward"] == {
        "type": "Tensor", "dtype": "float32", "shape": [packed[0] // 4, 1],
        "has_quant_state": False}


def test_checkpointing_an_fsdp_model_is_refused_before_training(monkeypatch, tmp_path):
    """Each FSDP rank holds a shard: save_checkpoint would write pieces as if whole (FSDP1) or
    crash on a sharded tensor (FSDP2), so train() refuses before the first step."""
    model = build("lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # as fully_shard would make it
    monkeypatch.setattr("labkit.train.loop._fsdp_kind", lambda m: "fsdp2")
    with pytest.raises(ValueError, match=r"checkpoints of an FSDP model \(fsdp2\) are not "
                       r"supported.*Train with DDP to checkpoint, or pass checkpoint_dir=None"):
        train.train(model, "shift", steps=2, batch_size=4, checkpoint_dir=tmp_path,
                    progress=False)
    assert not any(tmp_path.iterdir())
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), n  # refused before any step: nothing lost
