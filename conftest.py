"""Root pytest configuration, for every run (``make test``, ``pytest tests/x.py`` and
``pytest lessons/x.ipynb`` alike): the environment tests and nbval kernels inherit, and never
collecting the learner's workspace (a git-ignored copy of the lessons that `make lab` creates),
even when someone runs a bare `pytest .`."""

import os
import tempfile
from pathlib import Path

# Nothing in the test suite may reach a model hub; set before transformers/peft import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Before torch is imported (here and in nbval kernels, which inherit it): idle OpenMP threads
# sleep instead of spinning, which keeps a busy 2-core machine from slowing torch 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Quiz progress from tests and nbval kernels goes to a throwaway file, never to the learner's
# data directory.
if "LABKIT_PROGRESS" not in os.environ:
    os.environ["LABKIT_PROGRESS"] = str(
        Path(tempfile.mkdtemp(prefix="labkit-test-")) / "progress.json"
    )

collect_ignore = ["workspace", "build", "test-output"]
