"""labkit's public surface: lazy sub-package exports, deprecated aliases, light imports."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import labkit
from labkit import _api

ROOT = Path(labkit.__file__).parent


def _packages() -> list[str]:
    return sorted(f"labkit.{m.name}" for m in pkgutil.iter_modules([str(ROOT)]) if m.ispkg
                  and m.name != "checkpoints")


def _with_aliases() -> list[str]:
    """Every labkit module or package whose source declares a ``_DEPRECATED`` table."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if "_DEPRECATED" in path.read_text(encoding="utf-8"):
            rel = path.relative_to(ROOT.parent).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out.append(".".join(parts))
    return [m for m in out if m != "labkit._api"]


@pytest.mark.parametrize("package", _packages())
def test_every_export_resolves_and_no_submodule_shadows_one(package):
    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not submodules & set(pkg.__all__), (
        f"{package}: submodule(s) {sorted(submodules & set(pkg.__all__))} share a name with an "
        "export; importing the submodule would hide the function")
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None


@pytest.mark.parametrize("module", _with_aliases())
def test_each_deprecated_alias_warns_with_its_replacement(module):
    mod = importlib.import_module(module)
    aliases = _api.deprecated_names(module)
    assert aliases, f"{module} declares _DEPRECATED but it is empty"
    for old, replacement in aliases.items():
        with pytest.warns(_api.LabkitDeprecationWarning) as rec:
            obj = getattr(mod, old)
        text = str(rec[0].message)
        assert f"{module}.{old}" in text and replacement in text, text
        assert obj is not None
        assert _api._resolve(replacement) is not None  # the replacement exists


def test_lazy_exports_refuses_a_name_exported_twice():
    with pytest.raises(ValueError, match="exported by both .a and .b"):
        _api.lazy_exports("labkit", {".a": ["x"], ".b": ["x"]})


def test_unknown_name_is_an_attribute_error():
    getattr_, _, _ = _api.lazy_exports("labkit", {})
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        getattr_("nope")


def test_warn_once_says_a_key_once():
    key = "test-api-warn-once-key"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert _api.warn_once(key, "first") is True
        assert _api.warn_once(key, "second") is False
    assert [str(w.message) for w in rec] == ["first"]


LIGHT = ["labkit", "labkit.quiz"] + _packages()


@pytest.mark.parametrize("module", LIGHT)
def test_package_imports_leave_torch_out(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False", f"import {module} pulled in torch"
