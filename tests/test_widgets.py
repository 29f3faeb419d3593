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


# --- lesson 06: the memory calculator -------------------------------------------------------


def test_memory_numbers_match_the_estimator():
    from labkit import memory

    n = widgets.memory_numbers("llama-2-7b", "QLoRA", r=16, batch=1, seq_len=512,
                               checkpointing=True, device="16 GB T4")
    est = memory.estimate("llama-2-7b", batch=1, seq_len=512, r=16,
                          gradient_checkpointing=True, **widgets.CALC_METHODS["QLoRA"])
    assert n["total"] == pytest.approx(est.total / 1e9)
    assert sum(n["parts"].values()) == pytest.approx(n["total"])
    t4 = 15 * 2**30 / 1e9  # nvidia-smi shows a T4 (ECC on) as 15360 MiB
    assert n["device_gib"] == 15 and n["device_gb"] == pytest.approx(t4)
    assert n["fits"] and n["spare"] == pytest.approx(t4 - n["total"])
    assert n["dominant"] == "weights"
    full = widgets.memory_numbers("llama-2-7b", "full", device="80 GB")
    assert full["dominant"] == "optimizer"  # 8 of the 12 bytes per parameter
    assert not widgets.memory_numbers("llama-2-7b", "full", device="8 GB laptop")["fits"]


@pytest.mark.parametrize("kwargs, msg", [
    ({"method": "prompt"}, "unknown method 'prompt'"),
    ({"device": "4 GB"}, "unknown device '4 GB'"),
    ({"batch": 0}, "batch must be a positive int"),
    ({"model": "gpt-5"}, "unknown model config 'gpt-5'"),
])
def test_memory_numbers_bad_input(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        widgets.memory_numbers(**kwargs)


def test_memory_calculator_bundle_and_controls():
    ex = widgets.memory_calculator()
    bundle = ex._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("llama-2-7b, QLoRA, r=16, batch 1 x 512 tokens")
    assert "fits the 16 GB T4" in data["text/plain"]
    ex.method.value = "full"
    assert "does NOT fit the 16 GB T4" in ex.text() and "largest part: optimizer" in ex.text()
    assert "does NOT fit" in ex.out.value
    ex.model.value = "llama-1-65b"
    ex.method.value = "QLoRA"
    ex.device.value = "48 GB"
    assert "fits the 48 GB (48 GiB = 51.5 GB)" in ex.text()  # 48 * 2^30 / 10^9 = 51.54
    spare = 48 * 2**30 / 1e9 - ex._numbers()["total"]
    assert f"{spare:.1f} GB to spare (before the CUDA context)" in ex.text()


def test_calculator_says_when_the_sequence_is_too_long_for_the_model():
    calc = widgets.memory_calculator(model="llama-1-7b", method="QLoRA", seq_len=512)
    calc.seq_len.value = 4096  # offered by the slider, beyond LLaMA-1's 2048
    assert "longer than llama-1-7b&#x27;s max_seq_len 2048" in calc.out.value  # HTML-escaped
    calc.seq_len.value = 2048
    assert "GB" in calc.out.value and "max_seq_len" not in calc.out.value
