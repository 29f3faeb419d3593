"""The committed ledger: reading and writing ``ledger.json``, provenance, the table, the check.

``labkit/ledger/ledger.json`` (shipped with the package) holds two sections, ``"full"``
(the ledger) and ``"quick"`` (the rows ``benchmarks/ledger.py --quick`` reruns), each with

* ``provenance``: date, git commit (and whether the tree had uncommitted changes), the
  versions of Python, torch, peft, bitsandbytes and labkit (read from the installed
  metadata: nothing is imported for it), the thread count, the command and its wall time;
* ``design``: the :class:`labkit.ledger.experiment.Design` the rows ran with;
* ``rows``: every :class:`labkit.ledger.claims.Row`, per-unit values included.

:func:`compare` is ``--check``: a rerun matches the committed rows when every number agrees
*at its printed precision* (:func:`labkit.ledger.stats.fmt`) and every verdict is the same.
:func:`recompute_row` reruns one committed row (lesson 11 recomputes a step-0 row live).

Imports: the standard library, :mod:`labkit.ledger.stats`; torch only inside the functions
that run or describe runs.
"""

from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import platform
import subprocess
from pathlib import Path

from labkit.ledger.stats import fmt

#: The committed results (package data).
RESULTS_PATH = Path(__file__).with_name("ledger.json")
SECTIONS = ("full", "quick")


def load(path: str | Path | None = None) -> dict:
    """The committed ledger: ``{"full": {...}, "quick": {...}}`` (module docstring).

    Raises:
        FileNotFoundError: no results file at ``path``.
        ValueError: the file is not a ledger (names what is missing).
    """
    path = Path(path or RESULTS_PATH)
    data = json.loads(path.read_text(encoding="utf-8"))
    for sec in SECTIONS:
        if sec in data and not {"provenance", "design", "rows"} <= set(data[sec]):
            raise ValueError(f"{path}: section {sec!r} needs provenance, design and rows")
    return data


def rows(section: str = "full", path: str | Path | None = None) -> list:
    """The committed rows of ``section`` as :class:`labkit.ledger.claims.Row` objects (their
    statistics recomputed from the stored values)."""
    from labkit.ledger.claims import Row

    return [Row.from_dict(r) for r in load(path)[section]["rows"]]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def provenance(command: str, threads: int, wall_s: float) -> dict:
    """Where and how a section was produced (module docstring)."""
    import torch

    import labkit

    status = _git("status", "--porcelain")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "labkit": labkit.__version__,
        "machine": f"{platform.system()} {platform.machine()}",
        "threads": threads,
        "command": command,
        "wall_s": round(wall_s, 1),
    }


def save_section(section: str, rows: list, design: dict, prov: dict,
                 path: str | Path | None = None) -> Path:
    """Write ``section`` of the results file, keeping the other section as it is."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    path = Path(path or RESULTS_PATH)
    data = load(path) if path.exists() else {}
    data[section] = {"provenance": prov, "design": design,
                     "rows": [r if isinstance(r, dict) else r.to_dict() for r in rows]}
    ordered = {k: data[k] for k in SECTIONS if k in data}
    path.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
    return path


def _leaves(x, prefix: str = ""):
    """``(path, printed value)`` of every leaf, numbers at their printed precision."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{prefix}[{i}]")
    elif isinstance(x, float | int) and not isinstance(x, bool):
        yield prefix, fmt(x)
    else:
        yield prefix, x


def compare(committed: list, rerun: list) -> list[str]:
    """Differences between two lists of rows (dicts or Rows) at printed precision; empty
    when they agree. Each line names the row and the field."""
    old = [r if isinstance(r, dict) else r.to_dict() for r in committed]
    new = [r if isinstance(r, dict) else r.to_dict() for r in rerun]
    out = []
    names_old, names_new = [r["name"] for r in old], [r["name"] for r in new]
    if names_old != names_new:
        return [f"rows differ: committed {names_old}, rerun {names_new}"]
    for a, b in zip(old, new, strict=True):
        la, lb = dict(_leaves(a)), dict(_leaves(b))
        for key in sorted(set(la) | set(lb)):
            if la.get(key, "<missing>") != lb.get(key, "<missing>"):
                out.append(f"{a['name']}: {key}: committed {la.get(key, '<missing>')}, "
                           f"rerun {lb.get(key, '<missing>')}")
    return out


def table(rows: list) -> str:
    """The ledger as text: one block per row (arms' means, trainable counts, the paired
    mean and its 95 % CI, the verdict and its reason, the row's notes)."""
    from statistics import mean

    lines = []
    for r in rows:
        r = r if isinstance(r, dict) else r.to_dict()
        v, b = r["variant"], r["baseline"]
        counts = ", ".join(f"{k} {n:,d}" for k, n in r["trainable"].items())
        lo, hi = r["ci"]
        lines += [
            f"{r['name']}  [{r['metric']}; n = {r['n']} {r['units']}]",
            f"    {v['label']}: {fmt(mean(v['values']))}   {b['label']}: "
            f"{fmt(mean(b['values']))}   trainable: {counts}",
            f"    variant - baseline: {fmt(r['mean'])}  95 % CI [{fmt(lo)}, {fmt(hi)}]  "
            f"paper's sign {'+' if r['expected_sign'] > 0 else '-'}",
            f"    {r['verdict'].upper()}: {r['reason']}",
        ] + [f"    note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def recompute_row(name: str, section: str = "full", path: str | Path | None = None):
    """Run the committed row ``name`` of ``section`` again with its stored design.

    Returns:
        ``(committed, rerun)``, two :class:`labkit.ledger.claims.Row`; compare them with
        :func:`compare` (empty: they agree at the printed precision).

    Raises:
        KeyError: no row of that name (the message lists the names).
    """
    from labkit.ledger.claims import Row, build
    from labkit.ledger.experiment import Design

    sec = load(path)[section]
    found = [r for r in sec["rows"] if r["name"] == name]
    if not found:
        raise KeyError(f"no ledger row named {name!r}; rows: "
                       f"{', '.join(r['name'] for r in sec['rows'])}")
    committed = Row.from_dict(found[0])
    return committed, build(committed.claim, committed.setting,
                            Design.from_dict(sec["design"]))
