"""The ledger (issue #21): its statistics, its verdict rules, its committed results, and the
acceptance check: ``benchmarks/ledger.py --quick --check`` reproduces the committed quick
rows, and fails when one committed value is altered."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import ledger
from labkit.ledger import stats

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "benchmarks" / "ledger.py"

# Two-sided 95 % points of Student's t (any statistics table: the 0.975 quantile).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228,
           20: 2.086, 30: 2.042}


def _table_mismatches(quantile) -> list[str]:
    """Where ``quantile(0.975, df)`` disagrees with the table at its 3 decimals."""
    return [f"df={df}: {quantile(0.975, df):.4f} != {want}" for df, want in T_TABLE.items()
            if abs(quantile(0.975, df) - want) > 5e-4]


def test_t_quantile_matches_the_table():
    assert _table_mismatches(stats.t_quantile) == []
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("broken", [
    lambda p, df: 1.96,                                  # the normal's point at every df
    lambda p, df: stats.t_quantile(0.95, df),            # one-sided 95 % for two-sided
    lambda p, df: stats.t_quantile(p, df + 1),           # n degrees of freedom, not n - 1
    lambda p, df: stats.t_quantile(p, df) * 1.002,       # off by 0.2 %
], ids=["normal", "one-sided", "df+1", "off-0.2%"])
def test_a_broken_quantile_fails_the_table_check(broken):
    assert _table_mismatches(broken), "the table check would not catch this quantile"


def test_t_cdf_against_closed_forms():
    assert stats.t_cdf(0.0, 3) == 0.5
    for x in (-3.0, -0.5, 0.7, 2.0, 10.0):
        assert stats.t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-12)
        assert stats.t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)),
                                                  abs=1e-12)
    for x in (0.1, 0.5, 0.9):
        assert stats.betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert stats.betainc(3, 1, x) == pytest.approx(x ** 3, abs=1e-14)


def test_paired_interval_by_hand():
    p = stats.paired([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # d = 1, 2, 3: mean 2, sd 1
    half = 4.302652729749752 / math.sqrt(3)
    assert (p.n, p.mean, p.sd) == (3, 2.0, 1.0)
    assert (p.lo, p.hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    with pytest.raises(ValueError, match="same units"):
        stats.paired([1.0, 2.0], [1.0])


@pytest.mark.parametrize("a, b, sign, want, reason", [
    ([1.0, 1.2, 0.9, 1.1, 1.05], [0.0] * 5, 1, "reproduced", "excludes 0, with the paper's"),
    ([1.0, 1.2, 0.9, 1.1, 1.05], [0.0] * 5, -1, "contradicted", "opposite to the paper's"),
    ([-1.0, -1.2, -0.9, -1.1, -1.05], [0.0] * 5, -1, "reproduced", "excludes 0"),
    ([1.0, -1.0, 0.5, -0.4, 0.2], [0.0] * 5, 1, "inconclusive", "contains 0"),
    ([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], 1, "inconclusive", "zero spread: all 3 differences"),
    ([1.0, 2.0], [1.0, 2.0], 1, "inconclusive", "are 0, the arms agree exactly"),
    ([1.0], [0.0], 1, "inconclusive", "fewer than 2 pairs"),
    ([1.0, float("nan")], [0.0, 0.0], 1, "inconclusive", "not finite"),
], ids=["reproduced", "contradicted", "reproduced-negative", "ci-contains-0", "zero-spread",
        "all-equal", "one-pair", "nan"])
def test_verdict_rules(a, b, sign, want, reason):
    v, why = stats.verdict(stats.paired(a, b), sign)
    assert v == want and reason in why, (v, why)


def test_inconclusive_reason_prints_the_interval():
    p = stats.paired([0.03, -0.01, 0.02], [0.0, 0.0, 0.0])
    v, why = stats.verdict(p, 1)
    assert v == "inconclusive"
    assert why == f"the 95 % CI [{stats.fmt(p.lo)}, {stats.fmt(p.hi)}] contains 0"


def test_compare_is_at_printed_precision():
    rows = ledger.load()["quick"]["rows"]
    assert ledger.compare(rows, rows) == []
    nudged = json.loads(json.dumps(rows))
    nudged[0]["variant"]["values"][0] *= 1 + 1e-9  # below 4 significant digits
    assert ledger.compare(rows, nudged) == []
    nudged[0]["variant"]["values"][0] *= 1.01
    (line,) = ledger.compare(rows, nudged)
    assert line.startswith(f"{rows[0]['name']}: variant.values[0]: committed ")


# --------------------------------------------------------------------------- committed JSON


def _sections():
    data = ledger.load()
    return [(sec, data[sec]) for sec in ledger.SECTIONS]


@pytest.mark.parametrize("sec", ledger.SECTIONS)
def test_committed_rows_are_internally_consistent(sec):
    """Mean, CI and verdict recomputed from the stored per-unit values equal the stored ones."""
    data = ledger.load()[sec]
    assert data["rows"], f"the {sec} section has no rows"
    for r in data["rows"]:
        p = stats.paired(r["variant"]["values"], r["baseline"]["values"])
        assert p.n == r["n"] == len(r["unit_labels"]), r["name"]
        for got, want in ((p.mean, r["mean"]), (p.sd, r["sd"]), (p.t, r["t"]),
                          (p.lo, r["ci"][0]), (p.hi, r["ci"][1])):
            assert (got is None and want is None) or got == pytest.approx(
                want, rel=1e-12, abs=1e-15), r["name"]
        assert stats.verdict(p, r["expected_sign"]) == (r["verdict"], r["reason"]), r["name"]
        assert r["verdict"] in stats.VERDICTS and r["expected_sign"] in (1, -1)
        assert all(isinstance(n, int) and n > 0 for n in r["trainable"].values()), r["name"]
        if r["units"] == "seeds":
            assert r["unit_labels"] == [f"seed {s}" for s in data["design"]["seeds"]]


def test_full_ledger_follows_the_rules():
    data = ledger.load()["full"]
    prov, design = data["provenance"], data["design"]
    for key in ("date", "git_commit", "torch", "peft", "bitsandbytes", "threads", "command",
                "wall_s"):
        assert prov.get(key) is not None, f"provenance lacks {key}"
    assert prov.get("complete") is True, "the committed full ledger is a partial run"
    assert len(design["seeds"]) >= 5
    assert ledger.Design.from_dict(design) == ledger.FULL, "rows ran with another design"
    assert [(r["claim"], r["setting"]) for r in data["rows"]] == ledger.FULL_PLAN
    names = [r["name"] for r in data["rows"]]
    assert len(names) == len(set(names))
    assert {"dora", "dora_gain", "rslora", "loraplus", "qlora_init"} == {c for c, _ in
                                                                         ledger.FULL_PLAN}


def test_quick_section_is_the_quick_plan():
    data = ledger.load()["quick"]
    assert ledger.Design.from_dict(data["design"]) == ledger.QUICK
    assert [(r["claim"], r["setting"]) for r in data["rows"]] == ledger.QUICK_PLAN


def test_dora_rows_count_the_magnitudes():
    """DoRA trains one magnitude per output of each wrapped layer more than LoRA."""
    card = json.loads((ROOT / "labkit/checkpoints/tiny-reverse.json").read_text())["config"]
    h, i, kv = card["hidden_size"], card["intermediate_size"], card["n_kv_heads"]
    head = h // card["n_heads"]
    outs = {"q_proj": h, "k_proj": kv * head, "v_proj": kv * head, "o_proj": h,
            "gate_proj": i, "up_proj": i, "down_proj": h}
    extra = card["n_layers"] * sum(outs[t] for t in ledger.FULL.targets)
    rows = [r for sec, d in _sections() for r in d["rows"] if r["claim"] == "dora"]
    assert rows
    for r in rows:
        k = r["setting"]["r"]
        assert r["trainable"][f"DoRA r={k}"] - r["trainable"][f"LoRA r={k}"] == extra


def test_results_ship_with_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"ledger/*.json"' in text
    assert ledger.RESULTS_PATH.is_file() and ledger.RESULTS_PATH.parent.name == "ledger"


def test_lessons_row_recomputes():
    """The row lesson 11 recomputes live (deterministic: the layers are the units)."""
    committed, rerun = ledger.recompute_row("QPiSSA vs NF4, step-0 error, r=16")
    assert ledger.compare([committed], [rerun]) == []
    with pytest.raises(KeyError, match="rows: "):
        ledger.recompute_row("no such row")


# --------------------------------------------------------------------------- the CLI check


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(CLI), "--quick", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """``--quick --check`` on the committed file and on a copy with one value altered,
    started together (one thread each, so they share a 2-core machine)."""
    data = json.loads(ledger.RESULTS_PATH.read_text())
    row = data["quick"]["rows"][-1]
    old = row["baseline"]["values"][1]
    row["baseline"]["values"][1] = float(stats.fmt(old)) + 10 ** (
        math.floor(math.log10(abs(old))) - stats.DIGITS + 1)  # one unit in the last digit
    altered = tmp_path_factory.mktemp("ledger") / "altered.json"
    altered.write_text(json.dumps(data))
    procs = {"committed": _cli("--check"), "altered": _cli("--check", "--results", str(altered))}
    out = {k: (p.communicate(timeout=600)[0], p.returncode) for k, p in procs.items()}
    return out, row["name"]


def test_quick_check_reproduces_the_committed_rows(checks):
    text, rc = checks[0]["committed"]
    assert rc == 0, text
    assert "check passed" in text


def test_quick_check_fails_on_an_altered_value(checks):
    out, name = checks
    text, rc = out["altered"]
    assert rc == 1, text
    assert "CHECK FAILED" in text
    assert f"{name}: baseline.values[1]: committed" in text
