"""The frame of the course: light imports, clear errors, pins that agree, JupyterLab starts."""

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def run_py(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw
    )


# --- light imports and clear errors -------------------------------------------------------


def test_import_labkit_leaves_torch_out():
    r = run_py("import sys, labkit; print('torch' in sys.modules, 'bitsandbytes' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
sys.meta_path.insert(0, Block())
"""


LABKIT_MODULES = sorted(p.stem for p in (ROOT / "labkit").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", LABKIT_MODULES)
def test_missing_torch_gives_one_clear_line(module):
    """Without torch a module either imports (it doesn't need torch) or says what to install."""
    r = run_py(BLOCK_TORCH + f"import labkit.{module}")
    if r.returncode == 0:
        return
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: labkit's ML modules need torch"), last
    assert "pip install torch==2.13.0" in last and "make setup" in last


def test_missing_torch_check_can_fail():
    """The guard above is real: a module that imports torch directly would trip it."""
    r = run_py(BLOCK_TORCH + "import labkit._deps")
    assert "labkit's ML modules need torch" in r.stderr
    r = run_py(BLOCK_TORCH + "import torch")
    assert "labkit's ML modules need torch" not in r.stderr and r.returncode == 1


# --- pins ----------------------------------------------------------------------------------


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        assert version, f"not an exact pin: {line!r}"
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def constraints() -> dict[str, str]:
    return _pins((ROOT / "constraints.txt").read_text().splitlines())


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e .[test]" in pip_section
    return _pins(pip_section)


def test_environment_yml_pins_equal_constraints():
    cons, env = constraints(), environment_pins()
    assert env, "environment.yml pins nothing"
    wrong = {n: (v, cons.get(n)) for n, v in env.items() if cons.get(n) != v}
    assert not wrong, f"environment.yml vs constraints.txt: {wrong}"


def test_installed_versions_equal_constraints():
    wrong = {}
    for name, pinned in constraints().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            wrong[name] = (pinned, "not installed")
            continue
        if Version(have).public != Version(pinned).public:  # torch 2.13.0+cpu is 2.13.0
            wrong[name] = (pinned, have)
    assert not wrong, f"constraints.txt vs this environment: {wrong}; run make setup"


def test_pyproject_ranges_admit_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cons = constraints()
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    for spec in reqs:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in cons, f"{name} has a range in pyproject.toml but no pin in constraints.txt"
        assert req.specifier.contains(cons[name]), f"{spec} does not admit the pin {cons[name]}"
    assert project["requires-python"] == ">=3.10"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [
        ln for ln in ci if ln and not ln.startswith("#") and not ln.startswith(("set ", "cd "))
    ]
    assert commands, ".ci/run runs nothing"
    for cmd in commands:
        assert f"`{cmd}`" in readme or f"\n{cmd}\n" in readme, (
            f".ci/run runs {cmd!r}, which README.md lacks"
        )
    assert "make test" in commands


# --- env -----------------------------------------------------------------------------------


def test_seed_everything_reproduces_and_fixes_threads():
    import random

    import numpy as np
    import torch

    from labkit.env import seed_everything

    seed_everything(3, threads=1)
    a = (random.random(), np.random.rand(), torch.rand(2).tolist())
    assert torch.get_num_threads() == 1
    seed_everything(3, threads=2)
    b = (random.random(), np.random.rand(), torch.rand(2).tolist())
    assert a == b and torch.get_num_threads() == 2


@pytest.mark.parametrize(
    "bad, msg", [(-1, "non-negative int"), (1.5, "non-negative int"), (True, "non-negative")]
)
def test_seed_everything_rejects_bad_seeds(bad, msg):
    from labkit.env import seed_everything

    with pytest.raises(ValueError, match=msg):
        seed_everything(bad)


def test_pick_device_and_its_errors():
    import torch

    from labkit.env import pick_device

    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available here"):
            pick_device("cuda")


def test_report_lists_versions_and_a_working_4bit_path():
    import torch

    from labkit.env import report

    rows = {r.item: r for r in report(print_it=False)}
    assert rows["torch"].detail == torch.__version__
    assert rows["bitsandbytes"].detail == md.version("bitsandbytes")
    assert rows["bitsandbytes 4-bit"].status == "OK", rows["bitsandbytes 4-bit"].detail
    # the error is reported with the size of the values it is an error of
    m = re.search(r"max err ([\d.]+) on values up to ([\d.]+)", rows["bitsandbytes 4-bit"].detail)
    assert m and 0 < float(m[1]) < 0.5 * float(m[2]), rows["bitsandbytes 4-bit"].detail
    assert all(r.status in ("OK", "MISSING", "n/a") for r in rows.values())


# --- lint ----------------------------------------------------------------------------------


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    r = subprocess.run(
        [ruff, "check", "labkit", "tests", "benchmarks", "scripts", "lessons"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- the run command -----------------------------------------------------------------------


def test_make_lab_serves_the_course(tmp_path):
    """`make lab` (the README's run command) starts JupyterLab; its API answers 200."""
    from lab_server import start_lab  # the launcher tests/test_e2e_browser.py uses too

    course = tmp_path / "course"  # a copy: the server must not touch the committed lessons
    shutil.copytree(ROOT / "lessons", course)
    server = start_lab(course, tmp_path / "state", timeout=90)
    try:
        status, body = server.api("contents")
        assert status == 200
        assert "00_welcome.ipynb" in [entry["name"] for entry in body["content"]]
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(f"{server.url}/api/contents?token=wrong", timeout=5)
    finally:
        out = server.stop()
    assert re.search(r"Jupyter ?Server .* is running", out) or "http://127.0.0.1" in out, out[
        -2000:
    ]
