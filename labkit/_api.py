"""How labkit's sub-packages show their names: lazy exports, deprecated aliases, warn-once.

Every sub-package (``labkit.lora``, ``labkit.quant``, ...) keeps its code in small modules
and re-exports the public names from its ``__init__``, so that a lesson writes
``from labkit import lora; lora.add_lora(...)`` without knowing which file holds what.
The re-export is *lazy* (PEP 562 module ``__getattr__``): ``import labkit.quiz`` or
``import labkit.lora`` imports no torch until a name that needs it is touched. That keeps
the terminal quiz instant and lets ``labkit.lora.counts`` be used without the layers.

Names that were renamed or merged keep a *deprecated alias*: the old name still works
(learners' workspace copies of old lessons are never rewritten) and warns with a
:class:`LabkitDeprecationWarning` that names the replacement.

This module imports nothing from labkit and nothing heavy (stdlib only).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping


class LabkitDeprecationWarning(FutureWarning):
    """A labkit name was renamed or moved; the message names the replacement.

    A ``FutureWarning`` rather than a ``DeprecationWarning`` because the people who meet
    it are learners running notebooks, and Python hides ``DeprecationWarning`` outside
    ``__main__``.
    """


_said: set[str] = set()


def warn_once(key: str, message: str, category: type[Warning] = UserWarning,
              stacklevel: int = 2) -> bool:
    """Issue ``message`` the first time ``key`` is seen in this process; return whether it was.

    One helper for every "say this once" in labkit (a slow fallback, a back end that
    repacks weights, ...), so a loop that hits the same condition a thousand times prints
    one line. ``stacklevel`` counts from the caller of ``warn_once``.
    """
    if key in _said:
        return False
    _said.add(key)
    warnings.warn(message, category, stacklevel=stacklevel + 1)
    return True


def _resolve(path: str):
    """``"labkit.lora.trainable_params"`` -> the object (imports the module part)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]],
                 deprecated: Mapping[str, str | tuple[str, str]] | None = None,
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """Build a package's ``__getattr__``, ``__dir__`` and ``__all__`` for lazy re-exports.

    Args:
        package: the package's ``__name__``.
        exports: submodule (relative, e.g. ``".layers"``) -> the names it provides.
            A name starting with ``_`` is reachable but left out of ``__all__``.
        deprecated: old name -> replacement. A string is the replacement's public
            dotted path (returned as is); a tuple ``(shim_path, replacement_path)``
            returns the shim (for a changed signature) and names the replacement.

    Returns:
        ``(__getattr__, __dir__, __all__)`` to assign at the top of the ``__init__``.

    A submodule must not share its name with an exported name: importing
    ``labkit.memory.estimate`` would set the package attribute ``estimate`` to the module
    and hide the function. ``tests/test_api.py`` checks this for every package.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported by both {where[name]} "
                                 f"and {module}")
            where[name] = module
    old = dict(deprecated or {})
    clash = sorted(set(old) & set(where))
    if clash:
        raise ValueError(f"{package}: {clash} are both exported and deprecated")

    def __getattr__(name: str):
        pkg = importlib.import_module(package)
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
            # Cache it, and overwrite a same-named submodule attribute if the import set one.
            setattr(pkg, name, value)
            return value
        if name in old:
            target = old[name]
            shim, replacement = (target, target) if isinstance(target, str) else target
            warnings.warn(f"{package}.{name} is deprecated; use {replacement} instead.",
                          LabkitDeprecationWarning, stacklevel=2)
            return _resolve(shim)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    public = sorted(n for n in where if not n.startswith("_"))

    def __dir__() -> list[str]:
        return sorted(set(public) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__, public


def deprecated_names(package: str) -> dict[str, str]:
    """The deprecated aliases a package keeps: old name -> replacement's dotted path.

    Read back from the ``_DEPRECATED`` table each ``__init__`` passes to
    :func:`lazy_exports` (tests call every alias and check its warning).
    """
    table = getattr(importlib.import_module(package), "_DEPRECATED", {})
    return {k: (v if isinstance(v, str) else v[1]) for k, v in table.items()}
