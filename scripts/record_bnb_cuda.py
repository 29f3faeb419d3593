"""Record what bitsandbytes' CUDA kernels make of fixed inputs, for tests that run without a GPU.

``tests/test_quant.py`` checks ``labkit.quant``'s ``kernel="cuda"`` rules against this file
(``tests/fixtures/bnb_cuda_quant.pt``): the inputs are made here from fixed seeds on the CPU,
then quantized (4-bit NF4 and FP4 in three dtypes, with double quantization, and 8-bit
blockwise) and dequantized by bitsandbytes on a CUDA GPU. Each record keeps the input and
everything bitsandbytes returned, about 330 kB in all.

    python scripts/record_bnb_cuda.py [--out tests/fixtures/bnb_cuda_quant.pt]   # CUDA GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from labkit import _deps  # noqa: E402
from labkit import quant as Q  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inputs_4bit(quant_type: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random weights, then crafted blocks of 64: values on and one ulp around every code
    threshold (labkit's midpoints and the CUDA literals), tiny values of both signs, a block
    of subnormal floats, an all-zero block, and an odd-length tail."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(64 * 64, generator=g) * 0.02]
    code = Q.CODEBOOKS[quant_type]
    levels = code.sort().values
    marks = torch.cat([(levels[:-1] + levels[1:]) / 2,
                       torch.tensor(Q._CUDA_FP4_THRESHOLDS if quant_type == "fp4"
                                    else Q._CUDA_NF4_THRESHOLDS)])
    marks = torch.cat([marks, -marks])
    marks = torch.cat([marks, torch.nextafter(marks, torch.tensor(2.0)),
                       torch.nextafter(marks, torch.tensor(-2.0))])
    for absmax in (1.0, 0.0732421875, 0.064453125, 0.06005859375, 3.0):
        chunk = torch.cat([torch.tensor([absmax]), marks * absmax])
        parts += [chunk, torch.zeros(-chunk.numel() % 64)]  # each chunk fills whole blocks
    parts += [torch.tensor([1.0, 1e-3, -1e-3, 0.0, -0.0, 2.5e-3, -2.5e-3] + [0.0] * 57)]
    subnormal = torch.tensor([1e-39, -1e-39, 3e-40, -2e-45] * 16)  # float32 and bf16 only
    parts += [subnormal, torch.zeros(64), torch.randn(37, generator=g) * 0.02]  # odd tail
    return torch.cat(parts).to(dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "bnb_cuda_quant.pt"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU: this records bitsandbytes' CUDA kernels")
        return 2
    bnb = _deps.import_bnb()
    F = bnb.functional
    dev = torch.device("cuda")
    records = {"meta": {"bitsandbytes": bnb.__version__, "torch": str(torch.__version__),
                        "gpu": torch.cuda.get_device_name(0)}}
    for i, quant_type in enumerate(("nf4", "fp4")):
        for j, (name, dtype) in enumerate(DTYPES.items()):
            x = inputs_4bit(quant_type, dtype, seed=10 * i + j)
            packed, state = F.quantize_4bit(x.to(dev), blocksize=64, quant_type=quant_type,
                                            compress_statistics=True)
            plain_packed, plain = F.quantize_4bit(x.to(dev), blocksize=64,
                                                  quant_type=quant_type)
            assert torch.equal(packed, plain_packed)  # double quant changes the scales only
            records[f"{quant_type}-{name}"] = {
                "x": x, "packed": packed.cpu(), "absmax": plain.absmax.cpu(),
                "dq_absmax": state.absmax.cpu(), "dq_nested_absmax": state.state2.absmax.cpu(),
                "dq_offset": state.offset.cpu(),
                "dequantized": F.dequantize_4bit(plain_packed, plain).reshape(x.shape).cpu(),
                "dq_dequantized": F.dequantize_4bit(packed, state).reshape(x.shape).cpu(),
            }
    g = torch.Generator().manual_seed(99)
    code = Q.dynamic_codebook()
    mids = (code[:-1] + code[1:]) / 2  # ties, and one ulp either side
    ties = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)),
                      torch.nextafter(mids, torch.tensor(-2.0))])
    x8 = torch.cat([torch.randn(4096, generator=g) * torch.rand(4096, generator=g) ** 3,
                    torch.tensor([1.0]), ties[:255], torch.tensor([1.0]), ties[255:510],
                    torch.tensor([1.0]), ties[510:], torch.zeros(256),
                    torch.randn(100, generator=g)])
    q8, state8 = F.quantize_blockwise(x8.to(dev), blocksize=256)
    records["8bit"] = {"x": x8, "q": q8.cpu(), "absmax": state8.absmax.cpu(),
                       "dequantized": F.dequantize_blockwise(q8, state8).cpu()}
    torch.save(records, args.out)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(records) - 1} records, {size / 1e3:.0f} kB, "
          f"bitsandbytes {bnb.__version__} on {records['meta']['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
