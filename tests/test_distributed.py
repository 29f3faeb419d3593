"""labkit.distributed: a 2-process gloo DDP run under torchrun equals one process with the
same global batch; only adapter gradients are all-reduced; bad world sizes fail clearly."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from labkit import distributed as D
from labkit import lora, models, quant, train
from labkit.data import get_task

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, WORD_LEN = 4, 8, 6
#: DDP splits each matmul over rows and sums the two halves' gradients in another order
#: than one process does: rounding differences only, a few ulp of fp32 grown over 4 steps.
ATOL = 1e-6


def torchrun(out: Path, nproc: int = 2, *extra: str, timeout: float = 90,
             fail_at: int | None = None):
    env = {train.FAIL_ENV: str(fail_at) if fail_at is not None else ""}
    return D.launch(ROOT / "scripts" / "ddp_train.py", "--out", out, "--steps", STEPS,
                    "--batch-size", BATCH, "--word-len", WORD_LEN, *extra, nproc=nproc,
                    timeout=timeout, check=False, env=env)


def single_process_adapters(word_len: int = WORD_LEN, steps: int = STEPS, resume_from=None
                            ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The same run in this process, world size 1, the whole global batch per step
    (``word_len=0``: the task's mixed word lengths; ``resume_from``: a checkpoint dir)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = get_task("shift")
        if word_len:
            task = dataclasses.replace(task, min_len=word_len, max_len=word_len)
        model = models.load_pretrained().model
        torch.manual_seed(0)  # as scripts/ddp_train.py: the same A init
        lora.add_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0)
        kw = dict(checkpoint_dir=resume_from, resume=True) if resume_from else {}
        h = train.train(model, task, steps=steps, lr=3e-3, batch_size=BATCH, eval_n=8,
                        seed=0, progress=False, **kw)
    finally:
        torch.set_num_threads(threads)
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, h.loss


def assert_same_adapters(got: dict, ref: dict, atol: float = ATOL) -> None:
    assert got.keys() == ref.keys() and len(ref) == 8  # A and B of q_proj, v_proj x 2 layers
    for k in ref:
        # the adapters moved (B starts at 0), and moved the same way in both runs
        assert ref[k].abs().max() > 0, k
        torch.testing.assert_close(got[k], ref[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run, shared by the tests below: its adapters, run.json,
    and its final checkpoint (after step STEPS)."""
    out = tmp_path_factory.mktemp("ddp")
    r = torchrun(out, 2, "--checkpoint-dir", str(out / "ckpt"))
    assert r.returncode == 0, r.stderr[-3000:]
    return (load_file(str(out / "adapters.safetensors")),
            json.loads((out / "run.json").read_text()), out / "ckpt")


@pytest.mark.timeout(180)
def test_two_process_gloo_run_equals_one_process(ddp_run):
    ddp, run, _ = ddp_run
    ref, ref_loss = single_process_adapters()
    assert_same_adapters(ddp, ref)
    n_adapter = sum(p.numel() for p in ref.values())
    assert run["world_size"] == 2 and run["trainable_params"] == n_adapter
    # only adapter gradients travel: fp32, 4 bytes each, once per step
    assert run["bytes_per_step"] == 4 * n_adapter
    assert run["hook_calls"] >= STEPS
    # the history holds the global batch's loss (all-reduced), not rank 0's shard's
    assert len(run["loss"]) == STEPS
    assert run["loss"] == pytest.approx(ref_loss, abs=1e-5, rel=0)


def test_rank_0_saved_the_adapter_once_in_peft_format(ddp_run):
    ddp, _, ckpt = ddp_run
    model = models.load_pretrained().model
    lora.load_adapter(model, ckpt.parent / "adapter")  # no "module." prefix in the keys
    loaded = {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}
    assert loaded.keys() == ddp.keys()
    for k in ddp:
        assert torch.equal(loaded[k], ddp[k]), k


@pytest.mark.timeout(180)
def test_shards_with_unequal_token_counts_still_equal_one_process(tmp_path):
    # mixed word lengths: the two shards hold different numbers of answer tokens
    ids, labels = get_task("shift").batch(BATCH, rng=__import__("random").Random("train/shift/0"))
    per_shard = [(labels[i:i + BATCH // 2] != -100).sum().item() for i in (0, BATCH // 2)]
    assert per_shard[0] != per_shard[1], per_shard
    r = torchrun(tmp_path, 2, "--word-len", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    ref, ref_loss = single_process_adapters(word_len=0)
    assert_same_adapters(load_file(str(tmp_path / "adapters.safetensors")), ref)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["loss"] == pytest.approx(ref_loss, abs=1e-5, rel=0)


def test_averaging_shard_means_is_not_the_global_mean_but_token_weighting_is():
    """Why train() weights by tokens under DDP: the plain average of the two shards' mean
    losses weights a short shard's tokens more, and its gradient is measurably different."""
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11, requires_grad=True)
    labels = torch.randint(0, 11, (4, 7))
    labels[:2, 5:] = -100  # shard 0 (rows 0, 1) has 6 fewer loss tokens than shard 1
    shards = [slice(0, 2), slice(2, 4)]
    (g_global,) = torch.autograd.grad(train.lm_loss(logits, labels), logits)
    naive = sum(train.lm_loss(logits[s], labels[s]) for s in shards) / 2
    (g_naive,) = torch.autograd.grad(naive, logits)
    n = (labels != -100).sum()
    weighted = sum(2 * train.lm_loss(logits[s], labels[s], reduction="sum") / n
                   for s in shards) / 2  # what each rank backpropagates, then DDP's mean
    (g_weighted,) = torch.autograd.grad(weighted, logits)
    assert (g_naive - g_global).abs().max() > 1e-3
    torch.testing.assert_close(g_weighted, g_global, atol=1e-7, rtol=0)


@pytest.mark.timeout(180)
def test_qlora_under_ddp_and_fsdp2_equals_one_process_ddp_sends_adapter_bytes_only(
        tmp_path, ddp_run):
    one, two, fsdp = tmp_path / "one", tmp_path / "two", tmp_path / "fsdp"
    for out, nproc, extra in ((one, 1, ()), (two, 2, ()), (fsdp, 2, ("--fsdp",))):
        r = torchrun(out, nproc, "--qlora", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    ref = load_file(str(one / "adapters.safetensors"))
    assert_same_adapters(load_file(str(two / "adapters.safetensors")), ref)
    # FSDP2 shards the 4-bit base and the adapters over the 2 ranks; gathered, the same
    assert_same_adapters(load_file(str(fsdp / "adapters.safetensors")), ref)
    model = models.load_pretrained().model
    lora.load_adapter(model, fsdp / "adapter")  # saved from the sharded model, whole
    got = {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}
    assert_same_adapters(got, ref)
    assert json.loads((fsdp / "run.json").read_text())["bytes_per_step"] is None
    q, lo = json.loads((two / "run.json").read_text()), ddp_run[1]
    # the 4-bit base is frozen: the same adapter gradients travel as with LoRA
    assert q["qlora"] and q["trainable_params"] == lo["trainable_params"]
    assert q["bytes_per_step"] == lo["bytes_per_step"] == 4 * lo["trainable_params"]
    # what 4 bits change is each rank's copy of the base: q_proj (128 x 128) and v_proj
    # (64 x 128) of both layers go from float32 to NF4 codes + double-quantized state
    fp32, nf4 = 4 * (128 * 128 + 64 * 128), quant.quantized_nbytes(128 * 128) + \
        quant.quantized_nbytes(64 * 128)
    assert lo["base_weight_bytes"] - q["base_weight_bytes"] == 2 * (fp32 - nf4)


@pytest.mark.timeout(180)
def test_ddp_run_with_dropout_failed_at_a_step_resumes_to_the_uninterrupted_end(tmp_path):
    args = ("--dropout", "0.1", "--checkpoint-every", "2")
    r = torchrun(tmp_path / "ref", 2, "--checkpoint-dir", str(tmp_path / "ck_ref"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "ckpt"
    r = torchrun(tmp_path / "a", 2, "--checkpoint-dir", str(ckpt), *args,
                 fail_at=4)  # injected fault, not a timed kill
    assert r.returncode != 0 and "injected fault at step 4" in r.stdout + r.stderr
    assert json.loads((ckpt / train.CKPT_JSON).read_text())["step"] == 2
    # each rank draws its own dropout masks (seeded per rank) and saved its own generator:
    # equal-shaped shards, so with one seed for both ranks the two states would be equal
    rng = load_file(str(ckpt / train.CKPT_TENSORS))
    assert not torch.equal(rng["rng/torch/0"], rng["rng/torch/1"])
    r = torchrun(tmp_path / "b", 2, "--checkpoint-dir", str(ckpt), *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = load_file(str(tmp_path / "b" / "adapters.safetensors"))
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    ref = load_file(str(tmp_path / "ref" / "adapters.safetensors"))
    ref_run = json.loads((tmp_path / "ref" / "run.json").read_text())
    assert run["resumed_from"] == 2 and run["loss"] == ref_run["loss"]
    # it did resume: this process all-reduced steps 3 and 4 only, not 1..4
    assert run["bytes_total"] == 2 * 4 * ref_run["trainable_params"]
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(resumed[k], ref[k]), k  # same masks, same sums: bitwise


def test_a_two_process_checkpoint_resumes_in_one_process(ddp_run, tmp_path):
    """World size 2 for steps 1..4, then 1 process for 5..6, ends where 1 process for 1..6
    ends: the global batches and the token-weighted gradients do not depend on W."""
    _, _, ckpt = ddp_run
    shutil.copytree(ckpt, tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="written by 2 process.*resumed by 1.*dropout 0"):
        resumed, loss = single_process_adapters(steps=STEPS + 2, resume_from=tmp_path / "ckpt")
    ref, ref_loss = single_process_adapters(steps=STEPS + 2)
    assert_same_adapters(resumed, ref)
    assert loss == pytest.approx(ref_loss, abs=1e-5, rel=0)


@pytest.mark.timeout(180)
def test_full_fine_tuning_all_reduces_every_parameter(tmp_path):
    r = torchrun(tmp_path, 2, "--full")
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    n_all = sum(p.numel() for p in models.load_pretrained().model.parameters())
    assert run["full"] and run["trainable_params"] == n_all
    assert run["bytes_per_step"] == 4 * n_all


def test_world_size_that_does_not_divide_the_batch_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError) as e:  # launch(check=True) raises with the output's tail
        D.launch(ROOT / "scripts" / "ddp_train.py", "--out", tmp_path, "--batch-size", BATCH,
                 nproc=3, timeout=90)
    assert "--nproc_per_node=3" in str(e.value)
    assert "global batch_size 8 is not divisible by world size 3" in str(e.value)
    assert not (tmp_path / "run.json").exists()


def simulated_ring(buffers: list[list[float]], phases=("reduce", "gather")
                   ) -> tuple[list[list[float]], list[int]]:
    """Ring collectives done by hand: W ranks, each buffer cut into W chunks. "reduce" is
    W - 1 rounds of reduce-scatter (send a chunk to the right neighbour, who adds it; rank r
    ends with the sum of chunk r + 1), "gather" W - 1 rounds of all-gather (pass the
    finished chunks on, rank r starting from its chunk r + 1); both is a ring all-reduce.
    Returns the buffers and the elements each rank sent."""
    w, n = len(buffers), len(buffers[0])
    bufs = [list(b) for b in buffers]
    bounds = [(i * n // w, (i + 1) * n // w) for i in range(w)]
    sent = [0] * w
    for phase in phases:
        for step in range(w - 1):
            # rank r sends chunk (r - step) (reduce) or (r + 1 - step) (gather) to rank r + 1
            msgs = []
            for r in range(w):
                c = (r - step + (phase == "gather")) % w
                lo, hi = bounds[c]
                msgs.append(((r + 1) % w, lo, hi, bufs[r][lo:hi]))
                sent[r] += hi - lo
            for dst, lo, hi, vals in msgs:
                for i, v in zip(range(lo, hi), vals, strict=True):
                    bufs[dst][i] = bufs[dst][i] + v if phase == "reduce" else v
    return bufs, sent


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_ring_allreduce_bytes_counts_what_a_ring_sends(world):
    n = 24
    buffers = [[float(r * 100 + i) for i in range(n)] for r in range(world)]
    out, sent = simulated_ring(buffers)
    total = [sum(b[i] for b in buffers) for i in range(n)]
    assert all(b == total for b in out)  # the simulation is a correct all-reduce
    assert all(D.ring_allreduce_bytes(4 * n, world) == 4 * s for s in sent)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        D.ring_allreduce_bytes(4, 0)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_ring_allgather_and_reduce_scatter_bytes_count_what_a_ring_sends(world):
    n = 24
    chunk = [(i * n // world, (i + 1) * n // world) for i in range(world)]
    whole = [float(7 * i + 1) for i in range(n)]
    # all-gather: rank r starts with only its own shard (chunk r + 1); NaN marks the unknown
    own = [range(*chunk[(r + 1) % world]) for r in range(world)]
    start = [[whole[i] if i in own[r] else float("nan") for i in range(n)]
             for r in range(world)]
    out, sent = simulated_ring(start, phases=("gather",))
    assert all(b == whole for b in out)  # every rank ends with the whole buffer
    assert all(D.ring_allgather_bytes(4 * n, world) == 4 * s for s in sent)
    # reduce-scatter: every rank holds a whole buffer; rank r ends with chunk r + 1 summed
    buffers = [[float(r * 100 + i) for i in range(n)] for r in range(world)]
    out, sent = simulated_ring(buffers, phases=("reduce",))
    for r in range(world):
        lo, hi = chunk[(r + 1) % world]
        assert out[r][lo:hi] == [sum(b[i] for b in buffers) for i in range(lo, hi)]
    assert all(D.ring_reduce_scatter_bytes(4 * n, world) == 4 * s for s in sent)
    # each is one pass around the ring: half of an all-reduce, which is the two in a row
    assert D.ring_allgather_bytes(4 * n, world) == D.ring_allreduce_bytes(4 * n, world) / 2
    for fn in (D.ring_allgather_bytes, D.ring_reduce_scatter_bytes):
        with pytest.raises(ValueError, match="world_size must be >= 1"):
            fn(4, 0)


def test_shard_task_splits_the_global_batch():
    import random

    task = dataclasses.replace(get_task("shift"), min_len=WORD_LEN, max_len=WORD_LEN)
    full_ids, full_labels = task.batch(6, rng=random.Random("s"))
    parts = [D.shard_task(task, 6, r, 3).batch(6, rng=random.Random("s")) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_ids)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_labels)
    with pytest.raises(ValueError, match="not divisible by world size 4; use a multiple of 4"):
        D.shard_task(task, 6, 0, 4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        D.shard_task(task, 6, 3, 3)


def test_init_outside_torchrun_says_how_to_launch(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        D.init_from_env()
    assert D.rank() == 0 and D.is_main()


PEER_NEVER_JOINS = """
import os, socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
from labkit import distributed
distributed.init_from_env(timeout_s=2)
"""


@pytest.mark.timeout(60)
def test_a_peer_that_never_joins_fails_within_the_timeout():
    # rank 0 of 2 alone: its store waits 2 s for rank 1, then a clear error, not 30 minutes
    r = subprocess.run([sys.executable, "-c", PEER_NEVER_JOINS], cwd=ROOT, capture_output=True,
                       text=True, timeout=50)
    assert r.returncode != 0
    assert "not every one of the 2 ranks joined within 2 s" in r.stderr
    assert "torchrun --nproc_per_node=2" in r.stderr

