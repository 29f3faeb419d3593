"""One training loop for every lesson: the loop, its optimizer registry, evaluation, and
checkpoint / resume.

``labkit.train.train`` is the function (``from labkit import train; train.train(model,
"shift")``); no submodule is named ``train``.

Modules: ``loop`` (:func:`train`, the fault-injection hook), ``optimizers`` (the one
optimizer registry: :data:`OPTIMIZERS`, :func:`register_optimizer`, :func:`make_optimizer`,
the bitsandbytes factories, LoRA+'s :func:`loraplus`), ``evaluation`` (:func:`lm_loss`,
:func:`evaluate`, :class:`History`, autocast), ``checkpoint`` (:func:`save_checkpoint`,
:func:`load_checkpoint`, the run's fingerprint, generator states), ``parallel`` (ranks,
per-rank seeds, DDP / FSDP detection under torchrun).

Imports: the modules import torch, :mod:`labkit.data` and :mod:`labkit.generate`; this
``__init__`` imports nothing until a name is used (lazy re-exports, :mod:`labkit._api`).
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".loop": ["train", "FAIL_ENV", "_fail_at",
              "get_task"],  # labkit.data's, reached as train.get_task by lesson 02
    ".optimizers": ["OPTIMIZERS", "OptimizerFactory", "register_optimizer", "make_optimizer",
                    "loraplus", "trainable_parameters", "_named_trainable", "_adamw", "_sgd",
                    "_bnb_optimizer", "_takes_names"],
    ".evaluation": ["EVAL_SEED", "History", "lm_loss", "evaluate", "_autocast", "_safe_decode"],
    ".checkpoint": ["CKPT_TENSORS", "CKPT_JSON", "save_checkpoint", "load_checkpoint",
                    "_fingerprint", "_rng_states", "_split_optimizer_state",
                    "_write_checkpoint"],
    ".parallel": ["RANK_STRIDE", "_distributed", "_rank_world", "_fsdp_kind",
                  "_data_parallel_world", "_all_reduce_sum"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
