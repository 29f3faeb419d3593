"""GPU check: labkit's LoftQ against PEFT's own LoftQ, layer by layer (issue #21).

PEFT's LoftQ is ``peft.utils.loftq_utils.loftq_init``, what ``LoraConfig(init_lora_weights=
"loftq")`` calls for every target layer. It runs on CUDA only: it quantizes with bitsandbytes'
CUDA NF4 kernel (blocks of 64, no double quantization) and takes a full SVD of the residual
there. labkit's :func:`labkit.qlora.loftq.loftq_factors` runs the same algorithm with
labkit's NF4 (bitsandbytes' CPU codes, bit for bit). On a GPU this compares the two on every
target layer of the course model, at r = 4 and T = 1 and 5 alternating steps, with
``alpha = r`` (the one scaling where PEFT's ``B A`` is LoftQ's, peft #1982):

* Q: the share of weights whose dequantized 4-bit values are equal. bitsandbytes' CUDA kernel
  multiplies by an approximate reciprocal of the block's absmax, so a value that sits on the
  boundary between two NF4 levels may round the other way (gpu_check's quantizer comparison
  counts these); at most 0.1 % of the weights may differ;
* the starting error ``||W - (Q + B A)||_F / ||W||_F`` of both: equal within 1 % of each
  other, and both below plain NF4's ``||W - quant(W)||_F / ||W||_F``.

In the dry run (no CUDA) PEFT's function runs with its one device name changed from "cuda"
to "cpu" (its source, executed in its own module's namespace; the tests do the same), so
every line of the comparison runs and Q must match exactly.
"""

from __future__ import annotations

import inspect

import torch

from labkit import models
from labkit.qlora.loftq import loftq_factors, nf4_roundtrip

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 4
ITERS = (1, 5)
MAX_Q_DIFF = 1e-3  # share of weights whose NF4 value may differ (CUDA's reciprocal rounding)
ERR_RTOL = 0.01  # the two starting errors agree within 1 % of each other


def peft_loftq(device: torch.device):
    """PEFT's ``loftq_init``; on the CPU with its compute device changed to "cpu"."""
    from peft.utils import loftq_utils

    if device.type == "cuda":
        return loftq_utils.loftq_init
    src = inspect.getsource(loftq_utils.loftq_init)
    if src.count('"cuda"') != 1:
        raise RuntimeError("peft's loftq_init changed: its CPU stand-in needs updating")
    namespace = dict(vars(loftq_utils))
    exec(compile(src.replace('"cuda"', '"cpu"'), loftq_utils.__file__, "exec"), namespace)  # noqa: S102
    return namespace["loftq_init"]


def relative_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    return ((w - approx).norm() / w.norm()).item()


def compare(device: torch.device) -> bool:
    """Print one row per T (mean over the layers) and a verdict line; True when it holds."""
    loftq = peft_loftq(device)
    base = models.load_pretrained().model
    layers = {n: m.weight.detach().float() for n, m in base.named_modules()
              if n.rsplit(".", 1)[-1] in TARGETS}
    plain = {n: relative_error(w, nf4_roundtrip()(w)) for n, w in layers.items()}
    ok = True
    print(f"LoftQ, labkit against PEFT's loftq_init on {device.type} ({len(layers)} layers of "
          f"the course model, r={R}, alpha=r, NF4 blocks of 64, no double quant)")
    print(f"{'T':>2} {'Q values differing':>19} {'error labkit':>13} {'error PEFT':>11} "
          f"{'plain NF4':>10}")
    for t in ITERS:
        differ = total = 0
        errs = {"labkit": [], "peft": []}
        for w in layers.values():
            q_p, a_p, b_p = loftq(w.to(device), num_bits=4, reduced_rank=R, num_iter=t)
            _, q, a, b = loftq_factors(w, R, scaling=1.0, num_iter=t)
            differ += (q_p.float().cpu() != q).sum().item()
            total += q.numel()
            errs["peft"].append(relative_error(w, (q_p + b_p @ a_p).float().cpu()))
            errs["labkit"].append(relative_error(w, q + b @ a))
        lab, peft = (sum(v) / len(v) for v in (errs["labkit"], errs["peft"]))
        share = differ / total
        agree = (share <= (MAX_Q_DIFF if device.type == "cuda" else 0.0)
                 and abs(lab - peft) <= ERR_RTOL * peft
                 and all(e < plain[n] for n, e in zip(layers, errs["labkit"], strict=True))
                 and all(e < plain[n] for n, e in zip(layers, errs["peft"], strict=True)))
        ok &= agree
        print(f"{t:>2} {share:>18.4%} {lab:>13.4f} {peft:>11.4f} "
              f"{sum(plain.values()) / len(plain):>10.4f}  {'ok' if agree else 'DIFFERENT'}")
    print(f"LoftQ vs PEFT: {'ok' if ok else 'FAILED'} (Q values differing at most "
          f"{MAX_Q_DIFF if device.type == 'cuda' else 0.0:.1%}, errors within {ERR_RTOL:.0%}, "
          f"every layer below plain NF4)")
    return ok
