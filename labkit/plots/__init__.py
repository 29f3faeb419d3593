"""The course's figures: one function each, one look.

Every function takes plain numbers (lists, dicts, tensors), draws one figure in the course
style and returns the ``matplotlib.figure.Figure`` (see :mod:`labkit.plots.style`). Lessons
write ``from labkit import plots; fig = plots.lora_savings(...)`` without knowing which file
holds what.

Modules: ``style`` (colours, rcParams, ``course_style``, shared helpers), ``charts``
(training curves, bars, stacked bars: several lessons), ``lora_plots`` (lessons 01-02),
``finetune_plots`` (lesson 03), ``quant_plots`` (lessons 04-05), ``memory_plots`` (bytes in
memory, lesson 06, and over the network, lesson 09).

Imports: matplotlib and numpy in the modules, never torch; this ``__init__`` imports
nothing until a name is used (lazy re-exports, :mod:`labkit._api`).
"""

from labkit._api import lazy_exports

_EXPORTS = {
    ".style": ["COLORS", "BIT_WIDTHS", "course_style", "_CYCLE", "_RC", "_new", "_finish",
               "_label_bars", "_check_nonempty", "_method_color"],
    ".charts": ["training_curves", "bars", "stacked_bars"],
    ".lora_plots": ["lora_savings", "model_savings", "singular_values", "energy_curves",
                    "update_norms"],
    ".finetune_plots": ["rank_sweep", "lr_sweep", "_accuracy_frame"],
    ".quant_plots": ["quant_levels", "quant_errors", "bits_per_weight", "_format_color"],
    ".memory_plots": ["DEVICES", "MEMORY_PARTS", "device_gb", "bytes_per_param", "memory_stack",
                      "human_bytes", "comm_bytes", "_check_parts", "_stack"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
