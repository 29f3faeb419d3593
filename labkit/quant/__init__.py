"""4-bit quantization from scratch: NF4, FP4 and Int4, blockwise absmax, double quantization.

This is the storage format QLoRA (Dettmers et al. 2023, arXiv:2305.14314) uses for the frozen
base model, in plain PyTorch, bit for bit like bitsandbytes 0.50 on the CPU (and, with
``kernel="cuda"``, like its CUDA kernel up to that kernel's approximate reciprocal). It never
imports bitsandbytes; ``tests/test_quant.py`` compares the two.

Modules, in reading order: ``blockwise`` the algorithm (absmax, nearest code, packing,
:func:`quantize_4bit` / :func:`dequantize_4bit`), ``codebooks`` NF4 from normal quantiles,
FP4, Int4 and the dynamic 8-bit code, ``state`` :class:`QuantState` and double quantization
(8-bit blockwise), ``storage`` bytes and bits per weight, ``fast_lookup`` the look-up tables
that speed two steps up (same bits), ``bnb_rules`` bitsandbytes' CPU and CUDA rounding
rules, ``inputs`` what is accepted and the checks.

Example:
    >>> w = torch.randn(256, 128)
    >>> packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4", double_quant=True)
    >>> packed.shape, packed.dtype            # two codes per byte
    (torch.Size([16384, 1]), torch.uint8)
    >>> w_hat = dequantize_4bit(packed, state)  # same shape and dtype as w
    >>> round(bits_per_weight("nf4", 64, double_quant=True), 3)
    4.127

The modules may import torch and :mod:`labkit._deps`, and each other (each says which), but
nothing else from labkit; this ``__init__`` imports none of them (names load on first use,
see :mod:`labkit._api`), so ``import labkit.quant`` does not import torch.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".inputs": [
        "BLOCKSIZES", "QUANT_TYPES", "KERNELS", "_FLOAT_DTYPES", "_check_quant_type",
        "_check_blocksize", "_check_float_input", "_raise_not_finite", "_check_kernel",
    ],
    ".codebooks": [
        "NF4_OFFSET", "CODEBOOKS", "codebook", "nf4_codebook", "fp4_codebook",
        "int4_codebook", "dynamic_codebook",
    ],
    ".blockwise": [
        "nearest_code_index", "pack_nibbles", "unpack_nibbles", "quantize_4bit",
        "dequantize_4bit", "_ABSMAX_FLOOR", "_scale_blocks", "_sorted_bounds", "_exact_rule",
    ],
    ".state": [
        "DOUBLE_QUANT_BLOCKSIZE", "QuantState", "quantize_blockwise_8bit",
        "dequantize_blockwise_8bit", "_dynamic_code",
    ],
    ".storage": ["quantized_nbytes", "bits_per_weight", "quant_state_nbytes",
                 "quantization_error"],
    ".fast_lookup": ["_CodeLookup", "_code_lookup", "_pair_table"],
    ".bnb_rules": [
        "_c_float_literal", "_CUDA_NF4_THRESHOLDS", "_CUDA_FP4_THRESHOLDS",
        "_FP4_BY_MAGNITUDE", "_cuda_code_index", "_cuda_tree", "_scale_blocks_cuda",
        "_cuda_scale", "_cuda_blocks", "_flush_subnormals", "_cuda_codes_within_one_ulp",
        "_LUT_SIZE", "_grid_table", "_cuda_8bit_search",
    ],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
