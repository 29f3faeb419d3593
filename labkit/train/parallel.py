"""The training loop under torch.distributed: ranks, per-rank seeds, DDP / FSDP detection and
the one all-reduce the loop needs (see :mod:`labkit.distributed` for launching).

Data parallel (DDP under ``torchrun``): the same :func:`labkit.train.train` call trains a
``DistributedDataParallel`` model (or an FSDP one, without checkpoints: its ranks hold
shards). Every rank draws the same global batch from the stream and the task keeps its shard;
torch's RNG is seeded per rank (``seed + RANK_STRIDE * rank``), so dropout masks differ
between shards as they would between rows of one batch. The loss each rank backpropagates is
weighted by tokens, so that DDP's gradient average is the gradient of the global batch's mean
loss even when shards hold different numbers of answer tokens:

    rank r backpropagates  W * S_r / N,    S_r = summed token losses of shard r,
                                           N = sum_r N_r answer tokens in the global batch
    DDP averages:          (1/W) * sum_r W * S_r / N = (sum_r S_r) / N = global mean loss

``History.loss`` holds that global mean (the same number on every rank); only rank 0 shows
progress and writes checkpoints. Each step costs two scalar all-reduces besides DDP's
gradient buckets (N before the forward pass, the loss for the history after backward).

Outside torch.distributed every helper answers as one process would: rank 0 of 1.

Imports: torch only (FSDP's classes on first use, under a process group).
"""

from __future__ import annotations

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

#: torch's generator on rank r starts from ``seed + RANK_STRIDE * r``: a prime far above any
#: seed the course uses, so no rank shares its dropout masks with another rank or another seed.
RANK_STRIDE = 1_000_003


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group, ``(0, 1)`` outside torch.distributed."""
    if _distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _fsdp_kind(model: torch.nn.Module) -> str | None:
    """``"fsdp1"`` (``FullyShardedDataParallel``), ``"fsdp2"`` (``fully_shard``) or None."""
    if not _distributed():  # FSDP needs a process group (and importing it takes ~0.5 s)
        return None
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return "fsdp1"
    return "fsdp2" if isinstance(model, FSDPModule) else None


def _data_parallel_world(model: torch.nn.Module) -> int:
    """W when ``model``'s gradients are averaged over W ranks (DDP, or FSDP, which averages
    its reduce-scattered gradients the same way), else 1."""
    if _distributed() and (isinstance(model, torch.nn.parallel.DistributedDataParallel)
                           or _fsdp_kind(model)):
        return torch.distributed.get_world_size()
    return 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t
