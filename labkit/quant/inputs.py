"""What :mod:`labkit.quant` accepts, and the checks that refuse everything else.

The 4-bit functions take a float tensor, a block size, a format name (``quant_type``) and
whose rounding rules to follow (``kernel``). Each is checked here before any arithmetic, so
a wrong argument fails at once with a message that names the allowed values and, where
there is one, the fix:

* ``BLOCKSIZES``: the block sizes bitsandbytes accepts (powers of two, 32 .. 4096);
* ``QUANT_TYPES``: "nf4" and "fp4" (bitsandbytes' formats) and "int4" (labkit's, for
  comparison);
* ``KERNELS``: "cpu" or "cuda" rounding rules (see :mod:`labkit.quant.bnb_rules`), or
  "auto" for the ones bitsandbytes would run on the tensor's device;
* inputs: a non-empty float32, bfloat16 or float16 tensor without NaN or inf (a NaN or inf
  would become a block's absmax and wipe out the whole block).

May import: torch (through ``labkit._deps``); nothing else from labkit.
"""

from __future__ import annotations

from labkit._deps import torch  # one clear line when torch is missing

#: Block sizes bitsandbytes accepts for 4-bit quantization.
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
#: The 4-bit formats: the first two are bitsandbytes'; ``int4`` is for comparison only.
QUANT_TYPES = ("nf4", "fp4", "int4")

#: Whose rounding rules to follow: bitsandbytes' CPU path, its CUDA kernel, or the one that
#: bitsandbytes itself would run for the tensor's device ("auto").
KERNELS = ("auto", "cpu", "cuda")

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_quant_type(quant_type: str) -> None:
    """Refuse a ``quant_type`` that is not one of ``QUANT_TYPES``."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(
            f"unknown quant_type {quant_type!r}; choose one of {', '.join(QUANT_TYPES)}"
        )


def _check_blocksize(blocksize: int) -> None:
    """Refuse a block size that is not one of ``BLOCKSIZES`` (``True`` is not 1)."""
    if isinstance(blocksize, bool) or blocksize not in BLOCKSIZES:
        sizes = ", ".join(map(str, BLOCKSIZES))
        raise ValueError(
            f"blocksize {blocksize!r} is not supported; choose one of {sizes} "
            "(the sizes bitsandbytes accepts)"
        )


def _check_float_input(x: torch.Tensor, what: str) -> None:
    """Refuse what ``what`` (a function's name) cannot quantize: a non-tensor, a tensor of
    another dtype than ``_FLOAT_DTYPES``, an empty one. NaN and inf are found later, by the
    absmax (see ``_raise_not_finite``), which costs no extra pass over the values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} needs a floating-point tensor (float32, bfloat16 or float16), got "
            f"{x.dtype}; convert it first, e.g. x.float()"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{what} supports float32, bfloat16 and float16 (like bitsandbytes), got "
            f"{x.dtype}; convert it first, e.g. x.float()"
        )
    if x.numel() == 0:
        raise ValueError(
            f"{what} got an empty tensor (shape {tuple(x.shape)}); nothing to quantize"
        )


def _raise_not_finite(x: torch.Tensor, what: str) -> None:
    """Called only once a non-finite absmax showed the input holds NaN or inf."""
    flat = x.reshape(-1)
    n_nan = int(torch.isnan(flat).sum())
    n_inf = int(torch.isinf(flat).sum())
    first = int((~torch.isfinite(flat)).nonzero()[0, 0])
    raise ValueError(
        f"{what} got {n_nan} NaN and {n_inf} inf values (first at flat index {first}); "
        "a block's absmax would be NaN or inf and the whole block would be lost. "
        "Find where they come from, or replace them, e.g. torch.nan_to_num(x)"
    )


def _check_kernel(kernel: str, device: torch.device) -> str:
    """Resolve "auto" to the kernel bitsandbytes runs for ``device``; reject other names."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    return kernel
