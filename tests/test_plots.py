"""The figures draw what they are given: checked on the artists, not on pixels."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labkit import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_lora_savings_lines_are_the_trainable_share():
    ranks = [1, 8, 64]
    fig = plots.lora_savings({"4096 x 4096": (4096, 4096), "512 x 2048": (512, 2048)}, ranks)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["4096 x 4096", "512 x 2048"]
    np.testing.assert_allclose(lines[0].get_ydata(), [100 * r * 8192 / 4096**2 for r in ranks])
    np.testing.assert_allclose(lines[1].get_ydata(), [100 * r * 2560 / (512 * 2048) for r in ranks])
    assert _png(fig)[:4] == b"\x89PNG"


def test_model_savings_bars_and_labels():
    fig = plots.model_savings({"7B": (6_738_415_616, 4_194_304), "tiny": (1000, 10)})
    ax = fig.axes[0]
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == [10, 1000, 4_194_304, 6_738_415_616]
    texts = {t.get_text() for t in ax.texts}
    assert "6,738,415,616" in texts and "4,194,304" in texts


def test_singular_values_energy_annotations():
    s = [4.0, 2.0, 1.0, 1.0]  # energies 16, 4, 1, 1 of 22
    fig = plots.singular_values(s, mark=(1, 2))
    notes = sorted(t.get_text() for t in fig.axes[1].texts)
    assert notes == [f"r=1: {100 * 16 / 22:.0f} %", f"r=2: {100 * 20 / 22:.0f} %"]
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], [1, 0.5, 0.25, 0.25])


def test_training_curves_skip_missing_evals_and_name_missing_columns():
    runs = {
        "full": {"step": [0, 10, 20], "loss": [2.0, 1.0, 0.5]},
        "lora": {"step": [0, 10, 20], "loss": [2.0, None, 0.7]},
    }
    fig = plots.training_curves(runs, "loss")
    lines = fig.axes[0].get_lines()
    assert list(lines[1].get_xdata()) == [0, 20]
    with pytest.raises(KeyError, match="has no column 'eval_acc'.*it has: loss, step"):
        plots.training_curves(runs, "eval_acc")


def test_bars_write_values_and_refuse_empty_input():
    fig = plots.bars({"a": 3.0, "b": 12.5}, "MB", "sizes", fmt="{:.1f} MB")
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [3.0, 12.5]
    assert [t.get_text() for t in ax.texts] == ["3.0 MB", "12.5 MB"]
    with pytest.raises(ValueError, match="values is empty"):
        plots.bars({}, "MB", "nothing")


def test_style_does_not_leak():
    before = dict(matplotlib.rcParams)
    plots.bars({"a": 1}, "x", "t")
    assert matplotlib.rcParams["axes.spines.top"] == before["axes.spines.top"]
