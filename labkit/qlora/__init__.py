"""QLoRA: LoRA adapters on a frozen base stored in 4 bits (Dettmers et al., 2023, arXiv:2305.14314).

QLoRA keeps LoRA's recipe (a frozen ``W`` plus a trainable ``s * B A``) and changes how ``W``
is stored: NF4 codes, 4 bits a weight, with blockwise absmax scales that are themselves
quantized (double quantization, about 4.127 bits a weight in all). For every matmul the
weight is dequantized on the fly and thrown away again::

    h = dequant(W4) x + s * B A x          W4: packed 4-bit codes + quantization state
    dL/dx = dequant(W4)^T dL/dh + ...      gradients flow *through* the base to the input
    dL/dW4 = (none)                        the 4-bit base never trains; only A and B do

So the base costs about 0.52 bytes a weight instead of 2 (bf16) or 4 (fp32), and the
adapters, their gradients and their optimizer state stay in higher precision.

Modules:

* ``linear4bit``: the frozen 4-bit layer, bitsandbytes' or labkit's (pure PyTorch, bit for
  bit the same codes on the CPU), choosing the back end and compute dtype, and the
  bitsandbytes CPU trap labkit defuses.
* ``prepare``: :func:`quantize_model` and :func:`prepare_qlora`, their reports, the byte
  counts of 4-bit layers, gradient checkpointing.
* ``merge``: merging adapters into the 4-bit base (and measuring the rounding), unmerging,
  exporting a merged 16-bit model.
* ``loftq``: LoftQ (quantization and a low-rank correction chosen together) and QPiSSA's
  order (PiSSA in float, then the residual quantized): ``prepare_qlora(..., init=...)``.

The package may import :mod:`labkit.quant` and :mod:`labkit.lora` (and torch, bitsandbytes,
safetensors in its modules); this ``__init__`` imports none of them: the names below load
on first use.

Typical use::

    model = models.load_pretrained().model
    report = prepare_qlora(model, ["q_proj", "k_proj", "v_proj", "o_proj",
                                   "gate_proj", "up_proj", "down_proj"], r=8, alpha=16)
    print(report)                       # layers, bytes before / after, what stays 32-bit
    train.train(model, "shift", steps=200, lr=1e-2)
    lora.save_adapter(model, "out/")  # PEFT's format, as for plain LoRA
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".linear4bit": [
        "BACKENDS", "QLoRAWarning", "resolve_backend", "resolve_compute_dtype", "Params4bit",
        "Linear4bit", "is_4bit", "quantize_linear", "dequantize_weight",
        "disable_cpu_inference_repack", "_is_bnb_4bit",
    ],
    ".prepare": [
        "quantize_model", "prepare_qlora", "KeptLayer", "QuantReport", "QLoRAReport",
        "layer_bytes", "base_weight_bytes",
    ],
    ".loftq": ["loftq_factors", "nf4_roundtrip", "layer_roundtrip", "float_inits",
               "init_error"],
    ".merge": [
        "QLoRALinear", "merge_qlora", "unmerge_qlora", "MergeRow", "MergeReport",
        "merged_16bit_state_dict", "save_merged_16bit",
    ],
}
_DEPRECATED = {"enable_gradient_checkpointing": "labkit.models.set_gradient_checkpointing",
               "layer_nbytes": "labkit.qlora.layer_bytes",
               "base_weight_nbytes": "labkit.qlora.base_weight_bytes"}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
