"""LoRA: Low-Rank Adaptation of a frozen model (Hu et al., 2021, arXiv:2106.09685).

A frozen weight ``W`` (shape ``(d, k)``: ``d`` outputs, ``k`` inputs) gets a trainable
low-rank update (paper, section 4.1)::

    h = W x + s * B A x        A: (r, k), B: (d, r), r << min(d, k), s = alpha / r

Only ``A`` and ``B`` train: ``r * (d + k)`` numbers instead of ``d * k``. For a
4096 x 4096 projection and ``r = 8`` that is 65,536 instead of 16,777,216 (0.4 %).
``B`` starts at zero, so before training the adapted model is exactly the base model.

Modules: ``base`` (:class:`LoRALayer`, what every LoRA layer shares), ``layers``
(:class:`LoRALinear`, :class:`LoRAEmbedding`), ``dora`` (DoRA, ``use_dora=True``),
``init`` (the initialisations: default, gaussian, PiSSA), ``inject`` (targets,
:func:`add_lora`, named adapters), ``merging`` (merge / unmerge / unload), ``counts``
(every parameter count), ``files`` (saving and loading adapters in PEFT's file format),
``guard`` (the checks, and the rollback that leaves a model as it was after an error).
LoftQ quantizes the base, so it is QLoRA's: :mod:`labkit.qlora.loftq`.

Names follow PEFT on purpose (``base_layer``, ``lora_A``, ``lora_B``,
``lora_embedding_A``, ``lora_embedding_B``): a state-dict key here is a key there, so
adapter files move between the two libraries unchanged.

This package may import torch, safetensors and :mod:`labkit.models`; its ``__init__``
imports none of them (names load on first use, see :mod:`labkit._api`).
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".base": ["LoRALayer"],
    ".layers": ["LoRALinear", "LoRAEmbedding", "_is_conv1d"],
    ".dora": ["MAGNITUDE", "weight_norm", "init_magnitude", "dora_forward"],
    ".init": ["INITS", "pissa_factors", "pissa_to_lora", "converted_alpha"],
    ".guard": ["_check_hparams", "_check_adapter_name", "_check_finite", "_check_mergeable",
               "unchanged_on_error"],
    ".inject": [
        "BIAS_MODES", "LoRAConfig", "LoRAReport", "find_targets", "add_lora", "lora_layers",
        "get_adapter_params", "set_trainable_params", "set_adapter", "enable_adapters",
        "disable_adapters", "adapters_disabled", "delete_adapter", "_configs",
    ],
    ".merging": ["merge_lora", "unmerge_lora", "merged_state_dict", "unload_lora"],
    ".counts": [
        "ParamCount", "ParamRow", "LoRAEstimate", "adapter_params", "model_params",
        "planned_adapter_params", "config_params", "param_summary", "param_rows",
        "param_table", "_numel",
    ],
    ".files": [
        "WEIGHTS_NAME", "CONFIG_NAME", "DIGEST_KEY", "adapter_state_dict", "save_adapter",
        "read_adapter_config", "load_adapter",
    ],
}
_DEPRECATED = {
    "lora_param_count": "labkit.lora.adapter_params",
    "count_params": "labkit.lora.model_params",
    "count_lora_params": "labkit.lora.planned_adapter_params",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
