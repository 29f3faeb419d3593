"""Re-execute lesson notebooks in place, the way nbval will check them.

Usage:
    python scripts/run_notebook.py lessons/03_finetune_with_lora.ipynb [more.ipynb ...]
    python scripts/run_notebook.py --all

What it does, and why:
- runs every cell in a fresh kernel of *this* Python (as ``pytest --nbval-current-env``
  does), with the lesson folder as working directory and the same environment as the
  tests (offline hubs, a throwaway quiz-progress file), so stored outputs are exactly
  what nbval will reproduce;
- numbers execution counts 1..N in order (a fresh kernel does this by itself; we check);
- strips ``metadata.widgets`` (widget state saved by a front end holds model ids and
  rendered values that nbval does not compare and that make diffs noisy);
- stops with the failing cell's error and leaves the file untouched if any cell fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove widget state and per-run metadata; check execution counts are 1..N."""
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            count += 1
            if cell.execution_count != count:
                raise RuntimeError(
                    f"cell {count} has execution_count {cell.execution_count}; expected {count}"
                )
    return nb


def execute(path: Path, timeout: int = 600) -> float:
    """Execute ``path`` in place; return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in the root conftest.py
    with tempfile.TemporaryDirectory(prefix="labkit-exec-") as tmp:
        os.environ["LABKIT_PROGRESS"] = str(Path(tmp) / "progress.json")
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            # wait for late outputs (a figure) even on a busy machine; the 4 s default can
            # silently drop them
            iopub_timeout=60,
            resources={"metadata": {"path": str(path.parent)}},
        )
        t0 = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as exc:
            sys.exit(f"{path}: a cell failed, file left unchanged.\n{exc}")
        wall = time.perf_counter() - t0
    nbformat.write(clean(nb), path)
    return wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--all", action="store_true", help="every lessons/*.ipynb")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    paths = sorted((ROOT / "lessons").glob("*.ipynb")) if args.all else args.notebooks
    if not paths:
        ap.error("name at least one notebook, or use --all")
    for p in paths:
        if not p.exists():
            sys.exit(f"{p}: no such notebook")
        wall = execute(p, args.timeout)
        print(f"{p}: executed in {wall:.1f} s")


if __name__ == "__main__":
    main()
