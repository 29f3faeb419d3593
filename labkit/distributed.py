"""torchrun / DDP helpers: run :func:`labkit.train.train` unchanged on several processes.

Data parallelism in one picture. W processes (ranks) hold the same model; every step each
rank draws the SAME global batch of B examples from the seeded stream and keeps its shard,
rows ``rank * B/W .. (rank+1) * B/W``. Each computes the gradient of its shard's loss L_r,
then DDP all-reduces (sums, divides by W) the gradients, so every rank applies

    g = (1/W) * sum_r grad L_r

and the replicas stay identical. With a mean loss this is the gradient of the global batch's
loss exactly when each shard holds the same number of loss tokens (equal-length answers);
otherwise it is the mean of per-shard means, a slightly different weighting.

Only parameters with ``requires_grad=True`` are registered with DDP's reducer, so a LoRA
model synchronises its adapters only: per step the all-reduce moves

    bytes = 4 * (number of trainable parameters)     (fp32 gradients)

which :class:`CommCounter` measures with a DDP communication hook. For full fine-tuning
that is 4 * (all parameters); LoRA's r * (d + k) per adapted d x k layer instead of d * k
is the whole saving.

Typical use inside a script launched by ``torchrun --standalone --nproc_per_node=2``::

    rank, world = init_from_env()
    model = DistributedDataParallel(model)
    counter = CommCounter.attach(model)
    task = shard_task("shift", batch_size=16, rank=rank, world_size=world)
    train(model, task, batch_size=16, progress=is_main())
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.distributed as dist

from labkit.data import Task, encode_pairs, get_task

#: The course's DDP fine-tuning script (LoRA, QLoRA or full), for :func:`launch`.
DDP_TRAIN = Path(__file__).resolve().parents[1] / "scripts" / "ddp_train.py"

#: Collective / rendezvous timeout: a peer that never arrives fails the run in seconds,
#: not after gloo's default 30 minutes.
DEFAULT_TIMEOUT_S = 20


def init_from_env(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
                  ) -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA); ``None`` picks nccl when CUDA is
            there, else gloo.
        timeout_s: how long a collective (and the initial store handshake) may wait.

    Returns:
        ``(rank, world_size)``.

    Raises:
        RuntimeError: not launched by torchrun (``RANK`` / ``WORLD_SIZE`` missing), or a
            peer did not join within ``timeout_s``.
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: launch with torchrun, e.g. "
                           "`torchrun --standalone --nproc_per_node=2 script.py`")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # one GPU per rank: rank r on this node drives cuda:LOCAL_RANK
        torch.cuda.set_device(local_device())
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except dist.DistStoreError as e:  # rank 0's store waited timeout_s for the others
            world = os.environ["WORLD_SIZE"]
            raise RuntimeError(
                f"not every one of the {world} ranks joined within {timeout_s:g} s ({e}); "
                f"start all of them (torchrun --nproc_per_node={world}) and check that "
                f"MASTER_ADDR:MASTER_PORT ({os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']}) is reachable") from e
    return dist.get_rank(), dist.get_world_size()


def local_device() -> torch.device:
    """The device this rank trains on: ``cuda:<LOCAL_RANK>`` when CUDA is there (torchrun
    sets ``LOCAL_RANK``, the rank's index on its machine), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (or without torch.distributed): log, save and show progress here."""
    return rank() == 0


def log(*args, **kwargs) -> None:
    """``print`` on rank 0 only, so W processes do not print every line W times."""
    if is_main():
        print(*args, **kwargs, flush=True)


def check_divisible(batch_size: int, world_size: int) -> int:
    """The per-rank batch ``batch_size // world_size``.

    Raises:
        ValueError: ``world_size`` does not divide ``batch_size``.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if batch_size % world_size:
        lo = batch_size // world_size * world_size
        raise ValueError(f"global batch_size {batch_size} is not divisible by world size "
                         f"{world_size}; use a multiple of {world_size} (e.g. {lo or world_size}"
                         f" or {lo + world_size}) or another --nproc_per_node")
    return batch_size // world_size


@dataclasses.dataclass(frozen=True)
class ShardedTask(Task):
    """A task whose ``batch(B, rng=stream)`` draws the global batch of B and returns this
    rank's rows ``[rank * B/W, (rank+1) * B/W)``. Every rank advances the stream by the same
    B examples, so the ranks' shards are disjoint and together are the global batch."""

    rank: int = 0
    world_size: int = 1

    def batch(self, n: int, seed: int | None = None, rng: random.Random | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if (seed is None) == (rng is None):
            raise ValueError("give exactly one of seed= (a fixed batch) or rng= (a stream)")
        per_rank = check_divisible(n, self.world_size)
        if rng is None:
            rng = random.Random(f"{self.name}/batch/{seed}")
        pairs = self._draw(n, rng)
        return encode_pairs(pairs[self.rank * per_rank:(self.rank + 1) * per_rank])


def shard_task(task: str | Task, batch_size: int, rank: int, world_size: int) -> ShardedTask:
    """``task`` sharded for ``rank`` of ``world_size``; checks ``batch_size`` divides first.

    Raises:
        ValueError: ``world_size`` does not divide ``batch_size``; a bad rank.
    """
    check_divisible(batch_size, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base = get_task(task)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Task)}
    return ShardedTask(**fields, rank=rank, world_size=world_size)


def fully_shard_model(model: torch.nn.Module, device: torch.device | None = None
                      ) -> torch.nn.Module:
    """Shard ``model`` with FSDP2 (``torch.distributed.fsdp.fully_shard``), in place: one
    unit per decoder block in ``model.layers``, then the root (embedding, final norm, head).

    Each rank then keeps 1/W of every parameter (split along dim 0) and of its gradient and
    optimizer state. Before a block runs, its parameters are all-gathered whole, once for
    forward and again for backward, frozen ones included; only gradients of trainable
    parameters are reduce-scattered. A 4-bit base works here (tested with both back ends
    in ``tests/test_fsdp_status.py``): FSDP2 shards each weight on its own, so uint8 codes
    may sit beside float32 adapters.

    Returns:
        the model (FSDP2 changes its class in place).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = device or local_device()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gather_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, whole and on the CPU, from a DDP, FSDP2 or plain
    model. With FSDP2 every rank must call it: gathering the shards is a collective."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if hasattr(p, "full_tensor") else p  # DTensor: gather
            out[name] = t.detach().cpu().contiguous()
    return out


class CommCounter:
    """Counts the bytes DDP all-reduces, via a communication hook on its gradient buckets.

    Each bucket is a flat buffer of gradients; its size in bytes is numel * element size.
    The hook adds that up and then does the usual all-reduce (sum, divided by W).
    """

    def __init__(self, group=None):
        self.group = group
        self.bytes = 0
        self.calls = 0

    @classmethod
    def attach(cls, ddp_model: torch.nn.parallel.DistributedDataParallel, group=None
               ) -> CommCounter:
        """Register the counting hook on ``ddp_model``; returns the counter."""
        counter = cls(group)
        ddp_model.register_comm_hook(counter, _counting_allreduce_hook)
        return counter


def _counting_allreduce_hook(state: CommCounter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buf = bucket.buffer()
    state.bytes += buf.numel() * buf.element_size()
    state.calls += 1
    return allreduce_hook(state.group, bucket)


def ring_allreduce_bytes(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends (and receives) to all-reduce a buffer of ``nbytes`` in a ring.

    A ring all-reduce is a reduce-scatter then an all-gather, each W - 1 rounds of a
    1/W-sized chunk, so every rank sends

        2 * (W - 1) / W * nbytes

    which approaches twice the buffer as W grows, whatever the number of ranks: the cost per
    rank depends on what is all-reduced (the trainable gradients), not on how many ranks.
    """
    return 2 * _ring_pass_bytes(nbytes, world_size)


def _ring_pass_bytes(nbytes: int, world_size: int) -> float:
    # one pass around the ring: W - 1 rounds, each rank sends one 1/W chunk per round
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return (world_size - 1) / world_size * nbytes


def ring_allgather_bytes(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends to all-gather a buffer of ``nbytes`` (the WHOLE, gathered size)
    in a ring, each rank starting with its own 1/W shard of it.

    In each of W - 1 rounds every rank passes one 1/W chunk to its neighbour (its own shard
    first, then the one it just received), so every rank sends

        (W - 1) / W * nbytes

    half of an all-reduce of the same buffer: an all-reduce is a reduce-scatter followed by
    this all-gather. FSDP all-gathers each unit's parameters like this before running it.
    """
    return _ring_pass_bytes(nbytes, world_size)


def ring_reduce_scatter_bytes(nbytes: int, world_size: int) -> float:
    """Bytes each rank sends to reduce-scatter a buffer of ``nbytes`` (the whole size, as
    every rank holds it) in a ring, so that rank r ends with the sum of one 1/W shard.

    W - 1 rounds; in each every rank sends one 1/W chunk of partial sums to its neighbour,
    who adds its own values and passes it on: ``(W - 1) / W * nbytes`` per rank, the first
    half of a ring all-reduce. FSDP reduce-scatters the trainable parameters' gradients.
    """
    return _ring_pass_bytes(nbytes, world_size)


def torchrun_command(script: str | Path, *args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<nproc> <script> <args>`` with the torchrun
    of this Python environment (``--standalone``: a local rendezvous on a free port)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        raise FileNotFoundError(f"no torchrun next to {sys.executable}; it comes with torch: "
                                "`pip install torch==2.13.0` (or `make setup`)")
    return [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", str(script),
            *map(str, args)]


def launch(script: str | Path, *args: str, nproc: int = 2, timeout: float = 120,
           check: bool = True, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nproc`` processes with torchrun and wait for it (from a notebook
    or a test). Each process gets one thread: W processes on a small CPU would otherwise
    fight over the same cores.

    Args:
        env: extra environment variables for the processes.
        check: raise when the run fails.

    Returns:
        the finished process, its output captured as text.

    Raises:
        RuntimeError: (``check``) a non-zero exit; the message ends with the output's tail.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                **(env or {})}
    cmd = torchrun_command(script, *args, nproc=nproc)
    r = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        # torchrun ends with its own failure summary; the ranks' exceptions come before it
        lines = (r.stdout + r.stderr).splitlines()
        found = (re.match(r"(\[rank\d+\]:\s*)?([\w.]*(Error|Exception)\b: \S.*)", ln)
                 for ln in lines)
        errors = dict.fromkeys(m.group(2).strip() for m in found if m)  # once, not per rank
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with {r.returncode}:\n"
                           + "\n".join([*errors, "...", *lines[-6:]]))
    return r
