"""The one place where labkit imports its heavy dependencies.

Every ML module does ``from labkit._deps import torch`` instead of ``import torch``,
so a missing torch gives one clear line saying what to install, and
bitsandbytes (:func:`import_bnb`) and transformers + peft (:func:`import_hf`) are imported
once, here, with their known import-time noise filtered (nbval compares stderr, so a stray
log line would fail every lesson).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings

_INSTALL_HINT = (
    "labkit's ML modules need {pkg}, which is not installed in this Python "
    "({exe}). Install the course environment with `make setup`, or "
    "`pip install -c constraints.txt -e .` from the repository root."
)


def _missing(pkg: str) -> ImportError:
    import sys

    return ImportError(_INSTALL_HINT.format(pkg=pkg, exe=sys.executable))


try:
    import torch  # noqa: F401  (re-exported)
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise _missing("torch (pip install torch==2.13.0)") from exc

_bnb = None
_bnb_error: Exception | None = None


def import_bnb():
    """Import bitsandbytes once, quietly, and return the module.

    bitsandbytes 0.50 logs a warning at import time on AVX512-BF16 CPUs because the
    optional ``kernels`` package (which downloads kernels from a hub) is absent; we
    deliberately leave that package out, so the warning is noise. We silence exactly
    that logger for the duration of the import, and nothing else.

    Raises:
        ImportError: bitsandbytes is missing or fails to import; the message says
            how to install it.
    """
    global _bnb, _bnb_error
    if _bnb is not None:
        return _bnb
    if _bnb_error is not None:
        raise ImportError(f"bitsandbytes is unavailable here: {_bnb_error}") from _bnb_error
    quiet = [logging.getLogger(n) for n in ("bitsandbytes", "bitsandbytes.backends.cpu.ops")]
    old = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _bnb = importlib.import_module("bitsandbytes")
            importlib.import_module("bitsandbytes.nn")
    except Exception as exc:  # ImportError, or a broken native library
        _bnb_error = exc
        raise ImportError(
            f"bitsandbytes could not be imported ({exc}). "
            "Install it with `pip install -c constraints.txt 'bitsandbytes>=0.50.2,<0.51'`."
        ) from exc
    finally:
        for lg, lvl in zip(quiet, old, strict=True):
            lg.setLevel(lvl)
    return _bnb


def bnb_available() -> bool:
    """True when bitsandbytes imports here (never raises)."""
    try:
        import_bnb()
    except ImportError:
        return False
    return True


_hf = None

#: Warnings the libraries raise about their own code at run time, not about the caller's:
#: peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps
#: a model (get_peft_model, PeftModel.from_pretrained).
_HF_NOISE = [(r"`is_gradient_checkpointing` is deprecated", FutureWarning)]


def import_hf():
    """Import transformers and peft once, quietly; return ``(transformers, peft)``.

    The known noise, filtered here and nowhere else: peft imports bitsandbytes (so it goes
    through :func:`import_bnb` first, when it is installed); torch warns that
    ``torch.jit.script_method`` is deprecated while peft's modules load; the ``tokenizers``
    library warns, in every process forked after it ran in parallel, that it turns its
    parallelism off (so it starts with it off: the course's strings are short); and the
    messages in :data:`_HF_NOISE`, ignored from the first call on (each call makes sure of
    it again, since test runners reset warning filters). Every other warning shows.

    Raises:
        ImportError: transformers or peft is missing; the message says how to install them.
    """
    global _hf
    if _hf is None:
        import os

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        bnb_available()  # peft imports bitsandbytes when it is there: import it quietly first
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning,
                                        message=r"`torch\.jit\.script_method` is deprecated")
                transformers = importlib.import_module("transformers")
                peft = importlib.import_module("peft")
        except ImportError as exc:
            raise ImportError(
                f"the Hugging Face stack could not be imported ({exc}). Install the course "
                "environment with `make setup`, or `pip install -c constraints.txt -e .`."
            ) from exc
        _hf = (transformers, peft)
    for message, category in _HF_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    return _hf


@contextlib.contextmanager
def hf_progress_bars(enabled: bool):
    """Within the block, transformers' progress bars (e.g. "Loading weights", written to
    stderr with a rate that changes from run to run) are on or off; then as they were."""
    transformers, _ = import_hf()
    log = transformers.utils.logging
    was = log.is_progress_bar_enabled()
    (log.enable_progress_bar if enabled else log.disable_progress_bar)()
    try:
        yield
    finally:
        (log.enable_progress_bar if was else log.disable_progress_bar)()
