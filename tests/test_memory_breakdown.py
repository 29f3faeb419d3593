"""labkit.memory.breakdown: the MemoryBreakdown's stack and table, fits, dominant, bytes/param."""

import pytest

from labkit import lora, memory


def test_bytes_per_param_full_adamw_fp32_is_16():
    est = memory.estimate("llama-2-7b", "full", 1, 1, weight_dtype="fp32")
    bpp = memory.bytes_per_param(est, lora.config_params("llama-2-7b"))
    assert bpp["weights"] == pytest.approx(4, rel=1e-3)
    assert bpp["gradients"] == pytest.approx(4, rel=1e-3)
    assert bpp["optimizer"] == pytest.approx(8, rel=1e-3)


def test_fits_and_dominant():
    est = memory.estimate("llama-2-7b", "full", 1, 512, weight_dtype="bf16")
    assert memory.dominant(est) == "optimizer"
    assert est.total == pytest.approx(57.6e9, rel=0.01)  # 2 + 2 + 4 B/param + activations
    assert not memory.fits(est, 48) and memory.fits(est, 80)


def test_fits_counts_device_memory_in_gib():
    """GPU memory is sold in GiB: an "80 GB" card holds 80 * 2^30 bytes (85.9e9)."""
    b = memory.MemoryBreakdown(weights=80 * 1024**3)
    assert memory.fits(b, 80)
    b.activations = 1  # one byte more than 80 GiB
    assert not memory.fits(b, 80)
    # 7B full fine-tuning at 12 B/param: 81.2e9 B, above 80e9 but below 80 GiB
    est = memory.estimate("llama-2-7b", "full", 1, 512, weight_dtype="bf16", state_dtype="fp32",
                          gradient_checkpointing=True)
    assert 80e9 < est.total < 80 * 1024**3 and memory.fits(est, 80)
    with pytest.raises(ValueError, match="device_gib must be > 0"):
        memory.fits(b, 0)


def test_stack_can_keep_recompute_apart():
    est = memory.estimate("llama-2-7b", "qlora", 1, 512, gradient_checkpointing=True)
    four, five = est.stack(), est.stack(separate_recompute=True)
    assert est.recompute > 0 and five["recompute"] == est.recompute
    assert five["activations"] == est.activations
    assert four["activations"] == est.activations + est.recompute
    assert sum(four.values()) == sum(five.values()) == est.total


def test_breakdown_table_stack_and_units():
    b = memory.MemoryBreakdown(weights=2_000_000, gradients=1_000_000, optimizer=500_000,
                               activations=240_000, recompute=50_000, label="x")
    assert b.total == 3_790_000
    assert b.stack()["activations"] == 290_000  # recompute is drawn with the activations
    assert b.table("MB").splitlines()[1:] == [
        "weights            2.0 MB", "gradients          1.0 MB", "optimizer          0.5 MB",
        "activations        0.2 MB", "recompute          0.1 MB", "total              3.8 MB"]
    with pytest.raises(ValueError, match="unit must be 'MB' or 'GB'"):
        b.table("GiB")
