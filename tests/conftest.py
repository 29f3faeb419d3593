"""Shared test setup (the environment itself is set in the root conftest.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"

# Notebook fixtures for the tests live under tests/fixtures and must not be run by nbval.
collect_ignore_glob = ["fixtures/*"]

if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

