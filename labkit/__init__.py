"""labkit: the small package behind the LoRA & QLoRA Lab lessons.

``import labkit`` is deliberately light: it imports neither torch nor
bitsandbytes, so the terminal quiz (``python -m labkit.quiz``) starts at once.
The ML modules (``labkit.lora``, ``labkit.quant``, ...) import torch themselves.
"""

import sys

if sys.version_info < (3, 10):  # noqa: UP036  (tested by patching sys.version_info)
    raise ImportError(
        f"labkit needs Python 3.10 or newer; this is {sys.version.split()[0]}. "
        "Create the course environment with `make setup` (or conda env create -f environment.yml)."
    )

__version__ = "0.1.0"

__all__ = ["__version__"]
