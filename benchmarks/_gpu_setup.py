"""The QLoRA setup the GPU checks share: rank, targets, the bigger labkit model, and labkit's
estimate of one training step.

Imported by ``gpu_check.py`` and ``gpu_standard_stack.py`` as ``import _gpu_setup`` (a
script's own folder is first on ``sys.path``); ``_bench`` makes ``labkit`` importable.
"""

from __future__ import annotations

import torch
from _bench import TARGETS  # every linear layer of a LLaMA block

from labkit import memory, models

R = 8  # LoRA rank; alpha is 2 R, as PEFT's and labkit's lessons set it
MiB = 2**20

__all__ = ["MiB", "R", "TARGETS", "big_config", "estimate_bytes"]


def big_config(dry: bool) -> models.ModelConfig:
    """The bigger labkit model: about 280M parameters; tiny in the dry run."""
    tiny = models.get_config("tiny")
    if dry:
        return tiny.replace(hidden_size=192, intermediate_size=512, n_layers=2, n_heads=6,
                            n_kv_heads=2, name="big-dry")
    # 24 x (4.2M attention + 8.7M MLP) + head: about 280M parameters
    return tiny.replace(hidden_size=1024, intermediate_size=2816, n_layers=24, n_heads=16,
                        n_kv_heads=8, max_seq_len=64, name="big-280m")


def estimate_bytes(model: torch.nn.Module, batch_shape: tuple[int, int], dtype: torch.dtype,
                   checkpointing: bool) -> int:
    """labkit's estimate of one QLoRA step of this model: ``labkit.memory.estimate``."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    b, t = batch_shape
    est = memory.estimate(model.config, "qlora", batch=b, seq_len=t, compute_dtype=names[dtype],
                          optimizer="paged_adamw", r=R, targets=TARGETS,
                          gradient_checkpointing=checkpointing,
                          autocast=dtype != torch.float32)  # as the checks step
    return est.total
