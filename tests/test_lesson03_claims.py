"""The claims lesson 03 makes, checked over 3 seeds (and the arithmetic it shows by hand).

The recommendation "spend a parameter budget on rank before breadth" rests on
``benchmarks/lora_sweep.py`` (3 seeds, ranks 1-16, both target sets) and on the one
comparison repeated here: q,v at rank 16 against all linear layers at rank 4 (about the same
number of trainable parameters), the lesson's budget, seeds 1-3, the same batches and
evaluation words for both. The assertion is a paired t-test: the mean difference must
exceed t = 4.30 standard errors over the 3 seeds (p < 0.05 with 2 degrees of freedom), so a
noisy or lucky seed cannot make it pass.
"""

import importlib.util
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from labkit import lora, models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("lora_sweep",
                                                  ROOT / "benchmarks" / "lora_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def base():
    return models.load_pretrained().model


def test_paired_verdict_is_a_t_test_at_5_percent(bench):
    # differences 0.3, 0.2, 0.25 -> mean 0.25, sd 0.05, SE 0.05/sqrt(3) = 0.0289: 8.7 SE
    v = bench.paired_verdict([0.9, 0.8, 0.85], [0.6, 0.6, 0.6])
    assert v["diff"] == pytest.approx(0.25)
    assert v["se"] == pytest.approx(0.05 / math.sqrt(3))
    assert v["t"] == 4.30  # two-sided 95 % point of t with 2 degrees of freedom
    assert v["verdict"] == "a better"
    # differences 0.9, 0.1, 0.7: mean 0.567, sd 0.416, SE 0.240 -> 2.4 SE: past the
    # large-sample "2 SE" but not t(2) = 4.30, so with 3 seeds it is undecided
    v = bench.paired_verdict([0.9, 0.1, 0.7], [0.0, 0.0, 0.0])
    assert 2 < v["diff"] / v["se"] < 4.30
    assert v["verdict"] == "undecided"
    # same mean, but differences 0.9, -0.3, 0.15: SE 0.35 > diff / 2 -> undecided
    assert bench.paired_verdict([1.0, 0.3, 0.75], [0.1, 0.6, 0.6])["verdict"] == "undecided"
    assert bench.paired_verdict([0.1, 0.2], [0.5, 0.6])["verdict"] == "b better"
    assert bench.paired_verdict([0.5], [0.1])["verdict"] == "undecided"  # one seed: no spread


def test_t95_table(bench):
    assert bench.t95(1) == 12.71 and bench.t95(2) == 4.30 and bench.t95(10) == 2.23
    assert bench.t95(12) == bench.t95(10)  # untabulated: the smaller df's, conservative
    assert bench.t95(100) == 1.96
    with pytest.raises(ValueError, match="df must be >= 1"):
        bench.t95(0)


@pytest.mark.parametrize("targets", ["q,v", "all linear"])
@pytest.mark.parametrize("r", [1, 16])
def test_trainable_count_by_hand_equals_labkit(bench, base, targets, r):
    """The lesson's hand count: r (d_in + d_out) summed over the wrapped layers."""
    names = tuple(bench.TARGETS[targets])
    by_hand = sum(r * (m.in_features + m.out_features) for n, m in base.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.endswith(names))
    import copy

    m = copy.deepcopy(base)
    rep = lora.add_lora(m, list(names), r=r, alpha=2 * r)
    assert rep.params.trainable == by_hand == lora.model_params(m).trainable
    n_layers = base.config.n_layers * len(names)
    assert len(rep.layers) == n_layers


def test_same_parameters_rank_beats_breadth_over_3_seeds(bench, base):
    """The lesson's recommendation: with ~15k trainable parameters to spend, q,v at rank 16
    (14,336) beats all linear layers at rank 4 (16,384), in the lesson's budget (150 steps,
    lr 3e-3), paired over seeds 1-3. Evaluated once at the end (no early stop), on the
    benchmark's held-out words (FINAL_SEED). Measured: 100/98.5/99.5 % against 4.5/43/6.5 %,
    +81 ± 13 points (6.3 SE; decided needs 4.3).

    Slow (~35 CPU-seconds, six 150-step runs) on purpose: 150 steps is the lesson's budget,
    the claim is about it. Measured the same way with fewer steps: at 125 steps q,v is
    mid-jump (68/76/98.5 % against 2.5/2.5/3.5 %; still decided, 8.9 SE) and at 100 steps
    the comparison is undecided (3.5/7.5/90 % against 0/0/0.5 %, 1.2 SE), so the lesson's
    recommendation is about this budget and a shorter run would test a different statement."""
    acc = {(t, r): [bench.run(base, "shift", t, r, bench.LORA_LR, 150, seed,
                              eval_every=None)["acc"] for seed in (1, 2, 3)]
           for t, r in (("q,v", 16), ("all linear", 4))}
    v = bench.paired_verdict(acc["q,v", 16], acc["all linear", 4])
    msg = f"accuracies {acc}, paired diff {v['diff']:.3f} ± {v['se']:.3f} (SE)"
    assert v["verdict"] == "a better", msg


def test_benchmark_quick_runs(bench, capsys):
    assert bench.main(["--quick", "--no-lr"]) == 0
    out = capsys.readouterr().out
    assert "LoRA all linear r=4" in out and "q,v r=4 vs all r=1" in out
