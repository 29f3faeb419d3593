"""The ledger of the LoRA variants' claims (issue #21): run it, print it, check it.

The engine is :mod:`labkit.ledger` (its docstring states the rules and the design, fixed
before the first run); this script runs it and writes ``labkit/ledger/ledger.json``.

    python benchmarks/ledger.py                  # the full ledger (~30 min, 1 thread);
                                                 # rewrites the "full" section
    python benchmarks/ledger.py --quick          # the quick rows (a few seconds), printed
    python benchmarks/ledger.py --quick --write  # ... and rewrite the "quick" section
    python benchmarks/ledger.py --quick --check  # rerun the quick rows and compare them
                                                 # with the committed ones (exit 1 + diff)
    python benchmarks/ledger.py --report         # print the committed ledger, run nothing

Threads are pinned to 1 in every mode (``Design.threads``): one thread gives the same
numbers run after run, and leaves the second core of a 2-core machine to other work.
``--results PATH`` reads and writes another file (the tests check a doctored copy).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import ledger  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick rows only")
    p.add_argument("--check", action="store_true",
                   help="with --quick: compare with the committed quick rows; exit 1 if any "
                        "number differs at its printed precision")
    p.add_argument("--write", action="store_true",
                   help="with --quick: rewrite the committed quick section")
    p.add_argument("--report", action="store_true", help="print the committed ledger")
    p.add_argument("--results", default=None, metavar="PATH",
                   help=f"results file (default {ledger.RESULTS_PATH})")
    args = p.parse_args(argv)
    if (args.check or args.write) and not args.quick:
        p.error("--check and --write go with --quick (the full run always writes)")
    if args.check and args.write:
        p.error("--check compares with the committed rows; --write replaces them: choose one")
    path = Path(args.results) if args.results else ledger.RESULTS_PATH

    if args.report:
        data = ledger.load(path)
        for sec in ledger.SECTIONS:
            if sec in data:
                prov = data[sec]["provenance"]
                print(f"== {sec}: {prov['date']}, commit {prov['git_commit']}, torch "
                      f"{prov['torch']}, {prov['threads']} thread(s), {prov['wall_s']} s")
                print(ledger.table(data[sec]["rows"]))
        return 0

    section = "quick" if args.quick else "full"
    design = ledger.QUICK if args.quick else ledger.FULL
    plan = ledger.QUICK_PLAN if args.quick else ledger.FULL_PLAN
    command = "python benchmarks/ledger.py" + (" --quick" if args.quick else "")
    print(f"ledger ({section}): {len(plan)} rows, seeds {list(design.seeds)}, "
          f"{design.threads} thread(s)", flush=True)
    t0 = time.perf_counter()
    prov = ledger.provenance(command, design.threads, 0.0)  # the tree as the run started
    prov["argv"] = shlex.join(sys.argv)

    def show(row) -> None:
        print(ledger.table([row]), f"\n    ({time.perf_counter() - t0:.0f} s)", flush=True)
        if section == "full":  # a partial ledger survives an interrupted run
            partial = {**prov, "wall_s": round(time.perf_counter() - t0, 1),
                       "complete": False}
            ledger.save_section(section, done, design.to_dict(), partial, path)

    done: list = []
    for claim, setting in plan:
        done.append(ledger.build(claim, setting, design))
        show(done[-1])
    wall = time.perf_counter() - t0
    print(f"done in {wall:.0f} s")

    if args.check:
        committed = ledger.load(path)["quick"]["rows"]
        diff = ledger.compare(committed, done)
        if diff:
            print(f"CHECK FAILED: the rerun differs from the committed quick rows in {path} "
                  "at their printed precision:")
            print("\n".join(f"  {line}" for line in diff))
            return 1
        print(f"check passed: {len(done)} quick rows equal the committed ones in {path} "
              f"(at {ledger.DIGITS} significant digits)")
        return 0
    if section == "full" or args.write:
        prov.update(wall_s=round(wall, 1), complete=True)
        out = ledger.save_section(section, done, design.to_dict(), prov, path)
        print(f"wrote the {section} section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
