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
  would become a block's absmax and wipe out the whole block);
* integer arguments (block sizes, counts): a Python int, or anything that is an integer
  through ``__index__`` (numpy integers, a 0-d integer tensor), converted to int; a bool
  (``True`` is not a block size) and a float (even ``64.0``, a sign that a computation went
  astray) are refused with a ``ValueError``, like a value out of range;
* switches (``double_quant``, ``count_codebooks``): ``True`` or ``False`` only, since a
  string such as ``"no"`` is truthy and would silently switch the feature on (``TypeError``);
* a :class:`~labkit.quant.state.QuantState` (``_check_state``, behind ``QuantState.check``):
  fields that fit together (uint8 ``absmax`` only with ``nested_absmax`` and ``offset``,
  sizes that fit ``shape`` and ``blocksize``, a float32/bfloat16/float16 ``dtype``) and fit
  the packed bytes (their count, their device); an 8-bit code: 256 finite sorted levels.

Each check is O(1) (types, dtypes, sizes, devices) except where values are the point: NaN
and inf in an input (the absmax finds them at no extra cost), the 256 levels of an 8-bit
code, codes above 15 in ``pack_nibbles``. A state's values (absmax, offset) are not scanned:
``dequantize_4bit`` runs in every forward and backward pass of a 4-bit layer.

May import: torch (through ``labkit._deps``); nothing else from labkit.
"""

from __future__ import annotations

import math
import operator

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
    if not isinstance(quant_type, str) or quant_type not in QUANT_TYPES:
        hint = ""
        if isinstance(quant_type, str) and quant_type.lower() in QUANT_TYPES:
            hint = f" (lower case: {quant_type.lower()!r})"
        raise ValueError(
            f"unknown quant_type {quant_type!r}; choose one of {', '.join(QUANT_TYPES)}{hint}"
        )


def _as_int(value, name: str, low: int = 1) -> int:
    """``value`` as a Python int >= ``low`` (1 or 0): ints and numpy integers pass (see the
    module docstring); a bool, a float, a string or a smaller number raise a ``ValueError``."""
    kind = "a positive int" if low == 1 else f"an int >= {low}"
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None:
        hint = ""
        if isinstance(value, float) and value.is_integer():
            hint = f"; pass the int {int(value)} (int(...) of what you computed)"
        raise ValueError(f"{name} must be {kind}, got {type(value).__name__} {value!r}{hint}")
    if number < low:
        raise ValueError(f"{name} must be {kind}, got {number}")
    return number


def _check_blocksize(blocksize: int) -> int:
    """``blocksize`` as an int if it is one of ``BLOCKSIZES``; refuse anything else (``True``
    is not 1, ``64.0`` is a float: see the module docstring)."""
    sizes = ", ".join(map(str, BLOCKSIZES))
    try:
        size = _as_int(blocksize, "blocksize")
    except ValueError:
        size = None
    if size not in BLOCKSIZES:
        kind = "" if size is not None else f" (a {type(blocksize).__name__}, not an int)"
        raise ValueError(
            f"blocksize {blocksize!r}{kind} is not supported; choose one of {sizes} "
            "(the sizes bitsandbytes accepts)"
        )
    return size


def _check_flag(value, name: str) -> None:
    """Refuse a switch that is not ``True`` or ``False`` ("no" is truthy; see above)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True or False, got {type(value).__name__} {value!r}"
        )


def _check_tensor(value, name: str, dtype: torch.dtype | None = None) -> None:
    """Refuse a non-tensor, or a tensor of another dtype than ``dtype`` (when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name} must be a {dtype} tensor, got {value.dtype}")


def _check_codebook(code, name: str, max_levels: int | None = None) -> None:
    """Refuse a codebook that is not a 1-D floating tensor of 1 .. ``max_levels`` levels
    (any number when None; its values are not read: O(1))."""
    _check_tensor(code, name)
    if code.dim() != 1 or not code.is_floating_point():
        raise ValueError(
            f"{name} must be a 1-D floating tensor of levels, got shape {tuple(code.shape)} "
            f"and {code.dtype}; e.g. labkit.quant.codebook('nf4') or dynamic_codebook()"
        )
    if code.numel() == 0:
        raise ValueError(f"{name} is empty; a codebook needs at least one level")
    if max_levels is not None and code.numel() > max_levels:
        bits = max_levels.bit_length() - 1
        raise ValueError(
            f"{name} has {code.numel()} levels; {bits}-bit codes name at most {max_levels}"
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


# --------------------------------------------------------------------------------------
# A QuantState (QuantState.check; each check O(1)) and an 8-bit code
# --------------------------------------------------------------------------------------


def _check_state_dtype(dtype) -> None:
    """Refuse a ``state.dtype`` that dequantizing cannot return (an int would truncate)."""
    if dtype not in _FLOAT_DTYPES:  # also refuses a string such as "float32"
        raise TypeError(
            f"state.dtype {dtype!r} is not a dtype dequantize_4bit can return; it must be "
            "torch.float32, torch.bfloat16 or torch.float16 (the dtype that was quantized). "
            "Convert the result instead, e.g. dequantize_4bit(packed, state).to(torch.int64)"
        )


def _check_shape(shape) -> int:
    """``math.prod(shape)`` for a shape of non-negative ints holding at least one value."""
    try:
        dims = [_as_int(d, "state.shape's sizes", low=0) for d in shape]
    except TypeError:
        raise TypeError(
            f"state.shape must be a torch.Size or tuple of ints, got {shape!r}"
        ) from None
    if math.prod(dims) == 0:
        raise ValueError(f"state.shape {tuple(dims)} holds no values; nothing was quantized")
    return math.prod(dims)


def _check_plain(state) -> None:
    """Without double quantization: float absmax, and no nested field that would be ignored."""
    if not state.absmax.is_floating_point():
        raise TypeError(
            f"state.absmax is {state.absmax.dtype}; without double quantization it holds the "
            "float32 scales that quantize_4bit returned"
        )
    for name in ("offset", "nested_code"):
        if getattr(state, name) is not None:
            raise ValueError(
                f"state.{name} is set but state.nested_absmax is None: a double-quantized "
                "state needs both, a plain one neither. Use the state quantize_4bit "
                "returned, with all its fields"
            )


def _check_nested(state) -> None:
    """Under double quantization: uint8 absmax codes, their nested scales and the offset."""
    if state.nested_absmax is None:
        raise ValueError(
            "state.absmax holds uint8 codes (double quantization) but state.nested_absmax is "
            "None; without the nested scales the codes would be read as scales. Pass "
            "nested_absmax, offset and nested_code from the state quantize_4bit returned, or "
            "quantize again with double_quant=False"
        )
    if state.absmax.dtype != torch.uint8:
        raise TypeError(
            f"state.nested_absmax is set, so state.absmax must hold uint8 codes, got "
            f"{state.absmax.dtype}; use the state quantize_4bit returned, with all its fields"
        )
    if state.offset is None:
        raise ValueError(
            "state.offset is None but the state is double-quantized: the mean of the absmax "
            "values is needed to undo it. Pass offset from the state quantize_4bit returned"
        )
    for name in ("offset", "nested_absmax"):
        value = getattr(state, name)
        _check_tensor(value, f"state.{name}")
        if not value.is_floating_point():
            raise TypeError(
                f"state.{name} must be a floating tensor (float32, as quantize_4bit stores "
                f"it), got {value.dtype}"
            )
    if state.offset.numel() != 1:
        raise ValueError(
            f"state.offset must hold one value (the mean absmax), got shape "
            f"{tuple(state.offset.shape)}"
        )
    nested_blocksize = _as_int(state.nested_blocksize, "state.nested_blocksize")
    need = -(-state.n_blocks // nested_blocksize)
    if state.nested_absmax.numel() != need:
        raise ValueError(
            f"state.nested_absmax has {state.nested_absmax.numel()} entries but "
            f"{state.n_blocks} absmax values in nested blocks of {nested_blocksize} need {need}"
        )
    if state.nested_code is not None:
        _check_codebook(state.nested_code, "state.nested_code", 256)


def _check_packed(state, packed: torch.Tensor) -> None:
    """``packed`` holds the state's ceil(numel / 2) bytes, on the device of every field."""
    n = state.numel
    if packed.numel() != (n + 1) // 2:
        raise ValueError(
            f"packed holds {packed.numel()} bytes but state.shape {tuple(state.shape)} needs "
            f"{(n + 1) // 2} (two 4-bit codes per byte); packed and state do not belong together"
        )
    for name in ("absmax", "code", "offset", "nested_absmax", "nested_code"):
        value = getattr(state, name)
        if value is not None and value.device != packed.device:
            raise ValueError(
                f"state.{name} is on {value.device} but packed is on {packed.device}; move "
                "the state with state.to(packed.device)"
            )


def _check_state(state, packed: torch.Tensor | None = None) -> None:
    """``QuantState.check``: the fields of ``state`` fit together, and fit ``packed``."""
    _check_blocksize(state.blocksize)
    _check_quant_type(state.quant_type)
    _check_state_dtype(state.dtype)
    n = _check_shape(state.shape)
    _check_codebook(state.code, "state.code", 16)
    _check_tensor(state.absmax, "state.absmax")
    if state.double_quant or state.absmax.dtype == torch.uint8:
        _check_nested(state)
    else:
        _check_plain(state)
    if state.absmax.numel() != state.n_blocks:
        raise ValueError(
            f"state.absmax has {state.absmax.numel()} entries but {n} values in blocks of "
            f"{state.blocksize} need {state.n_blocks}"
        )
    if packed is not None:
        _check_packed(state, packed)


def _check_sorted_code(code: torch.Tensor) -> None:
    """Refuse an 8-bit code that the search cannot use: not 256 finite levels in ascending
    order (one vectorised check of its 256 values)."""
    _check_codebook(code, "code", 256)
    if code.numel() != 256:
        raise ValueError(f"an 8-bit codebook has 256 levels, got {code.numel()}")
    levels = code.float()
    if not bool(torch.isfinite(levels).all() & (levels[1:] >= levels[:-1]).all()):
        raise ValueError(
            "code must hold 256 finite levels in ascending order (the 8-bit search relies on "
            "it); sort it, e.g. code.sort().values, or leave code=None for dynamic_codebook()"
        )
