"""Exercise checks: run a learner's function on random inputs and say exactly what is wrong.

Each ``check_*`` function takes the learner's function (or value), runs it on several random
inputs, compares with an independent reference computed here, and, when they differ, tries
the classic mistakes one by one (a missing scale, a transposed matrix, one moment instead of
two...) to name the one the learner made. A check never raises on a wrong answer: it prints
one line and returns a :class:`CheckResult`.

That line is for the learner (and :func:`parse_check_lines` reads it back from stored
outputs)::

    CHECK <name>: PASS - <message>
    CHECK <name>: FAIL - <message>

``python -m labkit.classroom check`` does not trust it: it runs the same check in its own
process, on the learner's function called through the submission's kernel with a fresh
``seed``, and takes the verdict from the returned :class:`CheckResult`.

An exercise stub that still raises ``NotImplementedError`` is not caught: the cell fails with
the stub's own message ("Exercise ...: see the hint above"), so a learner running a student
notebook stops at the first exercise they have not done. Any other exception from the
learner's code is caught and reported as a FAIL that quotes it.

The exercises and their checks (tensor shapes follow ``labkit.lora``: ``W`` is ``d x k``,
``A`` is ``r x k``, ``B`` is ``d x r``, ``x`` is ``(..., k)``):

=========================  =====================================================  ======
check                      the learner writes                                     lesson
=========================  =====================================================  ======
check_lora_forward         ``f(x, W, A, B, alpha, r) -> y``, y = xW^T + (alpha/r) xA^T B^T  02
check_lora_param_count     ``f(d, k, r) -> int``, r (d + k)                       01, 03
check_absmax_block         ``f(block, code) -> (codes, absmax)`` for one block    04
check_absmax_quantize      ``f(x, code, blocksize) -> (codes, absmax)``, all blocks  04
check_memory_term          ``f(...) -> bytes`` for a named term (see MEMORY_TERMS)  05-07
check_gradient_bytes       ``f(cfg, r, targets) -> bytes``, predicted, then       06
                           measured on a real LoRA step by memory.measure
check_shard_loss           ``f(logits, labels, n_tokens, world_size) -> loss``,  09
                           world_size * S_r / N (S_r: the shard's summed token
                           losses, N: answer tokens of the whole global batch)
=========================  =====================================================  ======

Modules: ``harness`` (the protocol line, calling the learner's code, reporting), then one
module per lesson's exercises: ``lesson01_lora`` (parameter count), ``lesson02_lora_layers``
(LoRA forward), ``lesson04_quantization`` (absmax), ``lesson05_memory_terms`` (bytes of a
memory term, lessons 05-07), ``lesson06_memory`` (a prediction set against a measured step),
``lesson09_scaling_out`` (a DDP rank's loss), ``lesson12_failures`` (checkpointing on a
frozen model, adapter files, a new classification head) and ``lesson12_numerics`` (the
alpha / r scale, merging a QLoRA adapter, fp16 loss scaling, QLoRA's extra work, the
out-of-memory rule).

Imports: this ``__init__`` imports nothing heavy; the names below load on first use, and
torch only when a check on tensors runs, so a check of plain arithmetic (a count, a number
of bytes) runs at once, also where torch is missing. The lesson modules import the harness,
``lesson09_scaling_out`` imports ``labkit.data`` and ``labkit.train`` inside its check,
``lesson12_failures`` transformers and PEFT inside ``check_head_config``, and
``lesson12_numerics`` ``labkit.quant`` inside ``check_qlora_merge``.
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".harness": ["CHECK_LINE", "CheckResult", "parse_check_lines"],
    ".lesson01_lora": ["check_lora_param_count"],
    ".lesson02_lora_layers": ["check_lora_forward"],
    ".lesson04_quantization": ["check_absmax_block", "check_absmax_quantize"],
    ".lesson05_memory_terms": ["MEMORY_TERMS", "check_memory_term"],
    ".lesson06_memory": ["check_gradient_bytes"],
    ".lesson09_scaling_out": ["check_shard_loss"],
    ".lesson12_failures": ["check_adapter_state_dict", "check_head_config",
                           "check_inputs_require_grad"],
    ".lesson12_numerics": ["check_alpha_scale", "check_dequant_count", "check_fits_on_card",
                           "check_loss_scaler", "check_qlora_merge"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
