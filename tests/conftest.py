"""Shared test setup: offline hubs, a private quiz-progress file, fixed threads."""

import os
import sys
from pathlib import Path

# Nothing in the test suite may reach a model hub; set before transformers/peft import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Before torch is imported (here and in nbval kernels, which inherit it): idle OpenMP threads
# sleep instead of spinning, which keeps a busy 2-core machine from slowing torch 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"

# Notebook fixtures for the tests live under tests/fixtures and must not be run by nbval.
collect_ignore_glob = ["fixtures/*"]

if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

# Quiz progress from tests and nbval kernels (which inherit this environment) goes to a
# throwaway file, never to the learner's data directory.
if "LABKIT_PROGRESS" not in os.environ:
    import tempfile

    os.environ["LABKIT_PROGRESS"] = str(
        Path(tempfile.mkdtemp(prefix="labkit-test-")) / "progress.json"
    )
