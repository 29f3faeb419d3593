"""Seeding, device choice and the environment report of lesson 00.

``seed_everything`` is what every lesson calls first: it seeds Python, NumPy and
torch and fixes torch's thread count, because float reductions summed over a
different number of threads round differently, and nbval compares printed numbers.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import random
import sys
from dataclasses import dataclass

from labkit._deps import import_bnb, torch  # one clear line when torch is missing

#: Threads used by lessons and tests unless told otherwise. Two matches the CI
#: machine and a typical laptop's performance cores; fixing it makes float
#: sums reproducible between machines.
DEFAULT_THREADS = 2


def seed_everything(seed: int = 0, threads: int | None = DEFAULT_THREADS) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA), and fix torch's thread count.

    Args:
        seed: the seed, a non-negative int.
        threads: torch intra-op threads; ``None`` leaves the current setting.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.

    Raises:
        ValueError: ``seed`` is negative or not an int, or ``threads`` < 1.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (or None to leave it), got {threads}")
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses we start
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)  # seeds CUDA too
    return torch.Generator().manual_seed(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """The device lessons run on: CUDA when present, else the CPU.

    Apple's MPS is used only when asked for (``prefer="mps"``): bitsandbytes' 4-bit
    path and several ops the course uses are not reliable there yet.

    Args:
        prefer: ``"cuda"``, ``"cpu"`` or ``"mps"`` to force a device; ``None`` picks.

    Raises:
        ValueError: an unknown device name, or one that is not available here.
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer not in ("cuda", "cpu", "mps"):
        raise ValueError(f"unknown device {prefer!r}; choose 'cuda', 'cpu' or 'mps'")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }
    if not available[prefer]:
        raise ValueError(f"device {prefer!r} is not available here; use pick_device() to choose")
    return torch.device(prefer)


@dataclass
class Check:
    """One line of the environment report."""

    item: str
    status: str  # "OK", "MISSING" or "n/a"
    detail: str

    def row(self) -> str:
        return f"{self.item:<24} {self.status:<8} {self.detail}"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _bnb_4bit_check(device: torch.device) -> Check:
    """Quantize and dequantize a small tensor with bitsandbytes on ``device``."""
    try:
        bnb = import_bnb()
        x = torch.randn(64, 64, device=device)
        q, state = bnb.functional.quantize_4bit(x, blocksize=64, quant_type="nf4")
        y = bnb.functional.dequantize_4bit(q, state)
        err, amax = (x - y).abs().max().item(), x.abs().max().item()
        ok = err < 0.5 * amax
        # 4 bits give 16 levels per block, so the round trip is coarse by design: report the
        # error next to the size of the values, not alone
        detail = f"{device.type}, NF4 round trip: max err {err:.2f} on values up to {amax:.1f}"
        return Check("bitsandbytes 4-bit", "OK" if ok else "MISSING", detail)
    except Exception as exc:  # noqa: BLE001 - a report must not crash
        return Check("bitsandbytes 4-bit", "MISSING", f"{type(exc).__name__}: {exc}"[:80])


def report(print_it: bool = True) -> list[Check]:
    """What this machine offers the course: versions and capabilities.

    Each row is OK / MISSING (or n/a for a GPU-only item on a CPU machine). The
    lesson prints it in an output-ignored cell, since it depends on the machine.
    """
    rows = [
        Check(
            "python", "OK" if sys.version_info >= (3, 10) else "MISSING", platform.python_version()
        )
    ]
    for dist in ("torch", "bitsandbytes", "safetensors", "matplotlib", "ipywidgets", "jupyterlab"):
        v = _version(dist)
        rows.append(Check(dist, "OK" if v else "MISSING", v or f"pip install {dist}"))
    widgets_fe = _version("jupyterlab_widgets")
    rows.append(
        Check(
            "widgets front end",
            "OK" if widgets_fe else "MISSING",
            widgets_fe or "pip install jupyterlab_widgets",
        )
    )
    cuda = torch.cuda.is_available()
    rows.append(
        Check(
            "CUDA GPU",
            "OK" if cuda else "n/a",
            torch.cuda.get_device_name(0) if cuda else "none: lessons run on the CPU",
        )
    )
    if cuda:
        bf16 = torch.cuda.is_bf16_supported()
        rows.append(
            Check(
                "bf16 on GPU",
                "OK" if bf16 else "n/a",
                "yes" if bf16 else "no (e.g. T4): fp16 is used",
            )
        )
    rows.append(Check("CPU features", "OK", torch.backends.cpu.get_cpu_capability()))
    rows.append(_bnb_4bit_check(pick_device()))
    rows.append(Check("threads", "OK", f"torch uses {torch.get_num_threads()}"))
    try:
        importlib.import_module("labkit")
        rows.append(Check("labkit", "OK", _version("labkit") or "source checkout"))
    except ImportError as exc:  # pragma: no cover
        rows.append(Check("labkit", "MISSING", str(exc)))
    if print_it:
        print("\n".join(r.row() for r in rows))
    return rows
