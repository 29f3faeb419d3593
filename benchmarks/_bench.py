"""What the side-by-side benchmarks share: offline setup, the peers' targets, interleaved timing.

Imported by ``lora_vs_peft.py`` and ``qlora_vs_peft.py`` as ``import _bench`` (Python puts a
script's own folder first on ``sys.path``). Importing it makes the repository's ``labkit``
importable without an install and keeps transformers off the network.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# transformers' deprecation note raised inside peft; not ours to fix, and it clutters the table
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing`", category=FutureWarning)

# every linear layer of a LLaMA block, PEFT's names (and labkit's, which uses the same)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def interleave(fns: dict, reps: int) -> tuple[dict, dict]:
    """Run each callable ``reps`` times, reversing the order every round (A B C, C B A, ...).

    Returns wall-clock and process CPU seconds per call, by name. CPU time counts only this
    process's threads, so it is less disturbed by other jobs sharing the cores.
    """
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    order = list(fns)
    for i in range(reps):
        for k in (order if i % 2 == 0 else order[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def ratio(a: str, b: str, t: dict) -> float:
    """Median of the per-round ratios t[a] / t[b].

    A pair ran back to back under the same load, so this is steadier than a ratio of medians
    when other processes come and go.
    """
    return statistics.median(x / y for x, y in zip(t[a], t[b], strict=True))
