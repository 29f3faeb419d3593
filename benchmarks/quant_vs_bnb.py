"""labkit.quant against bitsandbytes' CPU 4-bit path: speed (and a bit-for-bit check).

Quantizes and dequantizes a 4096 x 4096 float32 and bfloat16 tensor (NF4, blocks of 64)
with labkit and with bitsandbytes, alternating the two within every repetition so that both
see the same machine load, and prints median times and the ratio labkit / bnb (below 1:
labkit is faster). bitsandbytes 0.50 quantizes on the CPU in pure PyTorch, as labkit does,
and dequantizes with a C kernel.

    python benchmarks/quant_vs_bnb.py            # 4096 x 4096, 7 repetitions
    python benchmarks/quant_vs_bnb.py --quick    # 512 x 512, 2 repetitions (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit._deps import import_bnb, torch  # noqa: E402

from labkit import quant as Q  # noqa: E402


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(size: int, repeats: int, double_quant: bool, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    F = import_bnb().functional
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
        packed_b, state_b = F.quantize_4bit(
            x, blocksize=64, quant_type="nf4", compress_statistics=double_quant
        )
        packed_l, state_l = Q.quantize_4bit(x, 64, "nf4", double_quant)
        same = torch.equal(packed_b, packed_l) and torch.equal(
            F.dequantize_4bit(packed_b, state_b).reshape(x.shape),
            Q.dequantize_4bit(packed_l, state_l),
        )
        ops = {  # each maps to a call with no arguments, timed as it is
            "lq": partial(Q.quantize_4bit, x, 64, "nf4", double_quant),
            "ld": partial(Q.dequantize_4bit, packed_l, state_l),
            "bq": partial(F.quantize_4bit, x, blocksize=64, quant_type="nf4",
                          compress_statistics=double_quant),
            "bd": partial(F.dequantize_4bit, packed_b, state_b),
        }
        times: dict[str, list[float]] = {k: [] for k in ops}
        for rep in range(repeats):
            # alternate who goes first, so neither always runs right after the other
            order = ("lq", "ld", "bq", "bd") if rep % 2 == 0 else ("bq", "bd", "lq", "ld")
            for key in order:
                times[key].append(_time(ops[key]))
        for op, l_key, b_key in (("quantize", "lq", "bq"), ("dequantize", "ld", "bd")):
            lab, ref = statistics.median(times[l_key]), statistics.median(times[b_key])
            ratios = [a / b for a, b in zip(times[l_key], times[b_key], strict=True)]
            rows.append({
                "dtype": str(dtype).replace("torch.", ""), "op": op, "labkit_s": lab,
                "bnb_s": ref, "ratio": lab / ref, "ratio_min": min(ratios),
                "ratio_max": max(ratios), "identical": same,
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small tensor, 2 repetitions")
    parser.add_argument("--size", type=int, default=4096, help="tensor is size x size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--double-quant", action="store_true", help="also quantize the absmax")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    size, repeats = (512, 2) if args.quick else (args.size, args.repeats)

    rows = run(size, repeats, args.double_quant, args.threads)
    dq = ", double quant" if args.double_quant else ""
    print(f"NF4, blocks of 64{dq}, {size} x {size}, {repeats} repetitions, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'dtype':9s} {'op':11s} {'labkit s':>9s} {'bnb s':>9s} {'labkit/bnb':>10s} "
          f"{'(min..max per rep)':>19s}  bits")
    for r in rows:
        print(f"{r['dtype']:9s} {r['op']:11s} {r['labkit_s']:9.4f} {r['bnb_s']:9.4f} "
              f"{r['ratio']:10.2f} {r['ratio_min']:8.2f}..{r['ratio_max']:<8.2f}  "
              f"{'identical' if r['identical'] else 'DIFFERENT'}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
