"""Deprecated: adapter files moved to :mod:`labkit.lora` (``labkit.lora.files``).

``from labkit import adapters; adapters.save_adapter(...)`` still works and warns with
the new path: write ``from labkit import lora; lora.save_adapter(...)`` instead.
Imports nothing until a name is used (then :mod:`labkit.lora`).
"""

from labkit._api import lazy_exports

_DEPRECATED = {name: f"labkit.lora.{name}" for name in (
    "WEIGHTS_NAME", "CONFIG_NAME", "adapter_state_dict", "save_adapter", "read_adapter_config",
    "load_adapter")}
__getattr__, __dir__, __all__ = lazy_exports(__name__, {}, _DEPRECATED)
