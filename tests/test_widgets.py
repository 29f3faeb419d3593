"""Explorers: the numbers they show, their text fallback, and driving them like a learner."""

import pytest

from labkit import widgets


def test_lora_counts_match_the_formula():
    n = widgets.lora_counts(4096, 11008, 16)
    assert n["frozen"] == 4096 * 11008
    assert n["lora"] == 16 * 4096 + 16 * 11008  # B: 4096 x 16, A: 16 x 11008
    assert n["share"] == pytest.approx(100 * n["lora"] / n["frozen"])


@pytest.mark.parametrize(
    "args, msg",
    [((0, 8, 1), "d must be a positive int"), ((8, 8, 16), "r = 16 exceeds min\\(d, k\\) = 8")],
)
def test_lora_counts_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        widgets.lora_counts(*args)


def test_rank_explorer_bundle_has_widget_and_text():
    ex = widgets.rank_explorer()
    bundle = ex._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("layer 4096 x 4096, rank 8")
    assert "65,536" in data["text/plain"]  # 8 * (4096 + 4096)


def test_rank_explorer_follows_the_sliders():
    ex = widgets.rank_explorer()
    ex.r.value = 64
    ex.d.value = 1024
    assert "rank 64" in ex.text() and f"{64 * (1024 + 4096):,}" in ex.text()
    assert f"{64 * (1024 + 4096):,}" in ex.out.value
    ex.d.value = 64
    ex.r.value = 256  # above min(d, k): shown clipped to 64, never an error in the widget
    assert "rank 64" in ex.text()
