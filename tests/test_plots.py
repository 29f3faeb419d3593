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


def test_model_savings_dots_counts_and_shares():
    fig = plots.model_savings({"7B": (6_738_415_616, 19_988_480), "tiny": (1000, 10)})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and not ax.patches  # dots, no bars on a log axis
    dots = sorted(tuple(xy) for coll in ax.collections for xy in coll.get_offsets())
    assert dots == [(10, 1), (1000, 1), (19_988_480, 0), (6_738_415_616, 0)]
    texts = {t.get_text() for t in ax.texts}
    assert {"6,738,415,616", "19,988,480", "1,000", "10"} <= texts
    assert "0.297 % = 1/337" in texts and "1.000 % = 1/100" in texts
    # the legend sits below the axes, clear of the count labels
    assert fig.axes[0].get_legend().get_bbox_to_anchor().y1 < ax.get_window_extent().y0


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


def test_stacked_bars_stack_parts_and_write_totals():
    rows = {"rule": {"linear": 3.0, "embed": 0.25},            # no "adapter" part: counts 0
            "real": {"linear": 3.5, "embed": 0.5, "adapter": 0.125}}
    fig = plots.stacked_bars(rows, "GB", "sizes", fmt="{:.3f} GB", colors={"embed": "#8C8C8C"})
    ax = fig.axes[0]
    # parts in first-seen order, one bar per row each, left edges cumulative
    by_part = {}
    for container in ax.containers:
        by_part[container.get_label()] = [(p.get_x(), p.get_width()) for p in container]
    assert list(by_part) == ["linear", "embed", "adapter"]
    assert by_part["linear"] == [(0.0, 3.0), (0.0, 3.5)]
    assert by_part["embed"] == [(3.0, 0.25), (3.5, 0.5)]
    assert by_part["adapter"] == [(3.25, 0.0), (4.0, 0.125)]
    assert matplotlib.colors.to_hex(ax.containers[1][0].get_facecolor()) == "#8c8c8c"
    assert [t.get_text() for t in ax.texts] == ["3.250 GB", "4.125 GB"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rule", "real"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["linear", "embed", "adapter"]


@pytest.mark.parametrize("rows, msg", [
    ({}, "rows is empty"),
    ({"a": {}}, r"rows\['a'\] is empty"),
    ({"a": {"x": -1.0}}, "must be >= 0"),
])
def test_stacked_bars_bad_input(rows, msg):
    with pytest.raises(ValueError, match=msg):
        plots.stacked_bars(rows, "GB", "t")


# --- lesson 04: quantization ---


def test_quant_levels_draws_the_histogram_and_each_distinct_level():
    values = np.array([-1.0, -0.5, -0.5, 0.0, 0.25, 0.9, 1.0])
    levels = {"nf4": [-1.0, -0.25, 0.0, 0.5, 1.0], "int4": [0.0, 0.0, -1.0, 1.0]}  # two zeros
    fig = plots.quant_levels(values, levels, bins=4)
    axes = [ax for ax in fig.axes if ax.get_ylabel() == "count"]
    assert len(axes) == 2
    for ax, code in zip(axes, levels.values(), strict=True):
        xs = [ln.get_xdata()[0] for ln in ax.get_lines()]
        assert xs == sorted(set(code))
        counts = [p.get_height() for p in ax.patches]
        assert counts == list(np.histogram(values, bins=4, range=(-1, 1))[0])
    assert axes[0].get_lines()[0].get_color() == plots.COLORS["nf4"]
    assert axes[1].get_title(loc="left") == "INT4: 3 distinct levels"
    with pytest.raises(ValueError, match="levels is empty"):
        plots.quant_levels(values, {})


def test_quant_errors_bars_equal_inputs_grouped_by_format():
    errors = {"normal": {"nf4": 9.2, "fp4": 12.2, "int4+dq": 10.8},
              "weights": {"nf4": 9.3, "fp4": 12.3, "int4+dq": 10.7}}
    spread = {"normal": {"nf4": 0.1, "fp4": 0.2, "int4+dq": 0.3}}  # no bars for "weights"
    fig = plots.quant_errors(errors, spread)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    assert [p.get_height() for p in bars] == [9.2, 12.2, 10.8, 9.3, 12.3, 10.7]
    assert [p.get_hatch() for p in bars[:3]] == [None, None, "//"]  # +dq is hatched
    lengths = sorted(seg[1][1] - seg[0][1] for c in ax.collections for seg in c.get_segments())
    assert lengths == pytest.approx([0.2, 0.4, 0.6])  # 2 x spread, for "normal" only
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in bars[:3]]
    assert colors == [plots.COLORS["nf4"].lower(), plots.COLORS["fp4"].lower(),
                      plots.COLORS["int4"].lower()]  # "int4+dq" takes int4's colour
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["9.2", "12.2", "10.8", "9.3", "12.3", "10.7"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "weights"]
    baseline = plots.quant_errors({"loss": {"fp32": 2.5, "nf4": 3.0}}).axes[0].patches[0]
    assert matplotlib.colors.to_hex(baseline.get_facecolor()) == plots.COLORS["base"].lower()


def test_quant_errors_refuses_mismatched_groups():
    with pytest.raises(ValueError, match=r"errors\['b'\] has formats \['fp4'\]"):
        plots.quant_errors({"a": {"nf4": 1.0}, "b": {"fp4": 1.0}})
    with pytest.raises(ValueError, match=r"spread\['a'\] must name a group of errors"):
        plots.quant_errors({"a": {"nf4": 1.0}}, spread={"a": {"fp4": 0.1}})
    with pytest.raises(ValueError, match="errors is empty"):
        plots.quant_errors({})


# --- lesson 06: memory --------------------------------------------------------------------


def _gb(w, g, o, a):
    return {"weights": w, "gradients": g, "optimizer": o, "activations": a}


def test_memory_stack_bars_stack_the_components_and_mark_devices():
    data = {"full": {"7B": _gb(13.5, 13.5, 54.0, 3.7), "13B": _gb(26.0, 26.0, 104.0, 5.8)},
            "QLoRA": {"7B": _gb(3.9, 0.08, 0.16, 0.5), "13B": _gb(7.0, 0.1, 0.25, 0.8)}}
    fig = plots.memory_stack(data)
    ax_full, ax_q = fig.axes[:2]
    assert ax_full.get_title() == "full" and ax_q.get_title() == "QLoRA"
    rects = [p for p in ax_q.patches]
    assert len(rects) == 2 * 4  # two models, four components
    # the 7B bar: each component starts where the previous one ended
    bar7 = sorted((r for r in rects if abs(r.get_x() + r.get_width() / 2) < 1e-9),
                  key=lambda r: r.get_y())
    assert [round(r.get_height(), 6) for r in bar7] == [3.9, 0.08, 0.16, 0.5]
    assert bar7[-1].get_y() + bar7[-1].get_height() == pytest.approx(4.64)
    # device lines sit at their GiB in GB: 8 GiB = 8 * 2^30 / 10^9 = 8.59 GB. QLoRA bars:
    # 4.64 and 8.15 GB: every bar fits 8 GiB, so the panel reaches up to that line
    # (8.59 * 1.08 > 8.15 * 1.12) and shows no device above it
    gib = 2**30 / 1e9
    q_lines = [ln.get_ydata()[0] for ln in ax_q.get_lines()]
    assert q_lines == pytest.approx([8 * gib])
    assert ax_q.get_ylim()[1] == pytest.approx(8 * gib * 1.08)
    # full bars: 84.7 and 161.8 GB: only the 80 GiB line (85.9 GB) lies between the smallest
    # bar and the top; 8-48 GiB lie below every bar and are not drawn
    full_lines = sorted(ln.get_ydata()[0] for ln in ax_full.get_lines())
    assert full_lines == pytest.approx([80 * gib])
    names = [t.get_text() for t in ax_full.texts if "GiB" in t.get_text()]
    assert names == ["80 GB: 80 GiB"]
    assert "own y scale" in fig._suptitle.get_text()
    assert len(_png(fig)) > 1000


def test_bytes_per_param_totals():
    rows = {"full fp32 + AdamW": _gb(4, 4, 8, 0), "QLoRA": _gb(0.52, 0.01, 0.02, 0)}
    fig = plots.bytes_per_param(rows)
    ax = fig.axes[0]
    widths = [round(p.get_width(), 6) for p in ax.patches]
    assert sorted(widths) == sorted([4, 4, 8, 0, 0.52, 0.01, 0.02, 0])
    texts = [t.get_text() for t in ax.texts]
    assert "16.00 B" in texts and "0.55 B" in texts


@pytest.mark.parametrize("call, msg", [
    (lambda: plots.memory_stack({}), "data is empty"),
    (lambda: plots.memory_stack({"full": {"7B": {"weight": 1}}}), "unknown memory component"),
    (lambda: plots.bytes_per_param({"x": {"grads": 1}}), "unknown memory component"),
])
def test_memory_plots_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_memory_stack_skips_crowded_device_labels():
    # bars of 1 and 100 GB; 200 GiB (214.7 GB) is the smallest device both fit, so the
    # panel reaches 214.7 * 1.08 = 231.9 GB and 1000 GiB is not drawn. 8 and 10 GiB (8.6,
    # 10.7 GB) are closer than 6 % of 231.9, so the 10 GiB line is drawn without its name
    fig = plots.memory_stack({"LoRA": {"a": _gb(1, 0, 0, 0), "b": _gb(100, 0, 0, 0)}},
                             devices={"eight": 8, "ten": 10, "forty": 40, "big": 200,
                                      "huge": 1000})
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4
    labels = [t.get_text() for t in ax.texts if "GiB" in t.get_text()]
    assert labels == ["eight: 8 GiB", "forty: 40 GiB", "big: 200 GiB"]


def test_memory_stack_draws_recompute_hatched_on_top():
    parts = dict(_gb(3.0, 0.1, 0.2, 0.5), recompute=0.25)
    fig = plots.memory_stack({"QLoRA": {"7B": parts}})
    ax = fig.axes[0]
    rects = sorted(ax.patches, key=lambda r: r.get_y())
    assert [round(r.get_height(), 6) for r in rects] == [3.0, 0.1, 0.2, 0.5, 0.25]
    assert rects[-1].get_hatch() == "///"
    assert rects[-1].get_y() + rects[-1].get_height() == pytest.approx(4.05)
    assert "recompute (one block, checkpointing)" in [
        t.get_text() for t in fig.legends[0].get_texts()]


def test_device_gb_converts_binary_capacity():
    assert plots.device_gb(80) == 80 * 1024**3 / 10**9
    assert round(plots.device_gb(80), 1) == 85.9


# --- lesson 01 / 02 figures ---------------------------------------------------------------


def test_energy_curves_are_cumulative_energy_of_sorted_values():
    fig = plots.energy_curves({"low": [1.0, 3.0], "flat": [1.0, 1.0, 1.0, 1.0]}, mark=(1, 2),
                              colors={"flat": plots.COLORS["base"]})
    ax = fig.axes[0]
    low, flat = [ln for ln in ax.get_lines() if ln.get_label() in ("low", "flat")]
    np.testing.assert_allclose(low.get_ydata(), [90.0, 100.0])  # 9 / 10, sorted first
    np.testing.assert_allclose(flat.get_ydata(), [25, 50, 75, 100])
    assert flat.get_color() == plots.COLORS["base"]
    marks = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in marks) == [1, 2]
    assert _png(fig)[:4] == b"\x89PNG"


def test_energy_curves_bad_input():
    with pytest.raises(ValueError, match="spectra is empty"):
        plots.energy_curves({})
    with pytest.raises(ValueError, match=r"spectra\['x'\] is empty"):
        plots.energy_curves({"x": []})


def test_update_norms_draw_one_line_per_rule():
    fig = plots.update_norms([1, 4, 16], {"alpha / r": [1.0, 0.5, 0.25],
                                          "alpha / sqrt(r)": [1.0, 1.0, 1.0]})
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["alpha / r"].get_ydata(), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(lines["alpha / sqrt(r)"].get_xdata(), [1, 4, 16])
    assert ax.get_yscale() == "log"


def test_update_norms_colours_and_reference_slope():
    fig = plots.update_norms([1, 4, 16], {"lora": [2.0, 1.0, 0.5], "rs": [2.0, 2.0, 2.0]},
                             colors={"lora": plots.COLORS["lora"]},
                             reference=(-0.5, "1/sqrt(r)"))
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert lines["lora"].get_color() == plots.COLORS["lora"]
    assert lines["rs"].get_color() != plots.COLORS["lora"]
    # r**-0.5 through the first rule's first point: 2, 1, 0.5 at r = 1, 4, 16
    np.testing.assert_allclose(lines["1/sqrt(r)"].get_ydata(), [2.0, 1.0, 0.5])
    assert lines["1/sqrt(r)"].get_linestyle() == "--"


def test_update_norms_needs_one_norm_per_rank():
    with pytest.raises(ValueError, match="one norm per rank"):
        plots.update_norms([1, 2], {"a": [1.0]})


# --- lesson 05: QLoRA ----------------------------------------------------------------------


def test_bits_per_weight_draws_curves_limits_and_points():
    sizes = [64 * 64, 1024 * 1024]
    fig = plots.bits_per_weight({"NF4 + DQ": (sizes, [5.1, 4.13])}, limits={"limit": 4.127},
                                points={"q_proj": (16384, 4.66)})
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert list(lines[0].get_xdata()) == sizes and list(lines[0].get_ydata()) == [5.1, 4.13]
    assert lines[1].get_ydata()[0] == 4.127  # the dashed limit
    assert list(lines[2].get_xdata()) == [16384] and list(lines[2].get_ydata()) == [4.66]
    assert ax.get_xscale() == "log"
    assert {t.get_text() for t in ax.texts} == {"limit: 4.127", "q_proj"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["NF4 + DQ", "our layers"]
    assert len(_png(fig)) > 1000


def test_bits_per_weight_colours_a_curve_and_its_limit_and_labels_all_dots_once():
    fig = plots.bits_per_weight(
        {"NF4 + DQ": ([4096, 65536], [4.6, 4.16]), "NF4": ([4096, 65536], [5.0, 4.53])},
        limits={"limit NF4 + DQ": 4.127},
        points={"k_proj": (8192, 5.2), "q_proj": (16384, 4.66)},
        colors={"NF4 + DQ": plots.COLORS["nf4"], "limit NF4 + DQ": plots.COLORS["nf4"]},
        label_offsets={"q_proj": (6, 4)})
    ax = fig.axes[0]
    curve, other, limit, dots = ax.get_lines()
    nf4 = plots.COLORS["nf4"]
    assert curve.get_color() == nf4 and limit.get_color() == nf4
    assert other.get_color() == plots._CYCLE[1]  # not named: the course cycle, in order
    assert list(dots.get_xdata()) == [8192, 16384] and list(dots.get_ydata()) == [5.2, 4.66]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["NF4 + DQ", "NF4",
                                                                     "our layers"]
    where = {t.get_text(): (t.get_position(), t.get_ha(), t.get_va()) for t in ax.texts}
    assert where["k_proj"] == ((-5, -5), "right", "top")  # default: below left of the dot
    assert where["q_proj"] == ((6, 4), "left", "bottom")


def test_format_colours_are_not_method_colours_and_bit_widths_darken_with_bits():
    methods = {plots.COLORS[k].lower() for k in ("full", "lora", "qlora", "base", "weights",
                                                 "gradients", "optimizer", "activations",
                                                 "quant_state")}
    formats = [plots.COLORS[k].lower() for k in ("nf4", "fp4", "int4")]
    assert len(set(formats)) == 3 and not set(formats) & methods
    widths = [plots.BIT_WIDTHS[b] for b in (32, 16, 8, 4)]
    assert not {w.lower() for w in widths} & methods

    def luminance(c):
        r, g, b = matplotlib.colors.to_rgb(c)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    lum = [luminance(c) for c in widths]
    assert lum == sorted(lum) and len(set(lum)) == 4  # more bits, darker


def test_training_curves_title_default_and_given():
    runs = {"a": {"step": [1, 2], "loss": [1.0, 0.5]}}
    assert plots.training_curves(runs).axes[0].get_title() == "Loss during training"
    ax = plots.training_curves(runs, title="Training loss").axes[0]
    assert ax.get_title() == "Training loss"


@pytest.mark.parametrize("call, msg", [
    (lambda: plots.bits_per_weight({}), "curves is empty"),
    (lambda: plots.bits_per_weight({"a": ([1, 2], [4.0])}), "2 sizes but 1 values"),
])
def test_bits_per_weight_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


# --- lesson 03: fine-tuning ---------------------------------------------------------------


def test_rank_sweep_plots_params_against_accuracy_with_rank_labels():
    res = {"q,v": {1: (896, 0.0), 4: (3584, 40.0)},
           "all linear": {4: (16384, 98.0), 1: (4096, 20.0)}}
    fig = plots.rank_sweep(res, full=(328320, 99.0))
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_array_equal(lines["q,v"].get_xdata(), [896, 3584])
    np.testing.assert_array_equal(lines["all linear"].get_xdata(), [4096, 16384])  # by rank
    np.testing.assert_array_equal(lines["all linear"].get_ydata(), [20.0, 98.0])
    np.testing.assert_array_equal(lines["full fine-tuning"].get_xdata(), [328320])
    assert lines["full fine-tuning"].get_color() == plots.COLORS["full"]
    assert sorted(t.get_text() for t in ax.texts) == ["r=1", "r=1", "r=4", "r=4"]
    assert ax.get_xscale() == "log"
    assert _png(fig)[:4] == b"\x89PNG"
    assert lines["q,v"].get_linestyle() == "-"  # joined by default


def test_rank_sweep_markers_only_and_labels_on_opposite_sides():
    # q,v r=4 and all linear r=1 sit at nearly the same x and y: their labels must not overlap
    res = {"q,v": {1: (896, 0.0), 4: (3584, 0.0)}, "all linear": {1: (4096, 0.0)}}
    fig = plots.rank_sweep(res, connect=False)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["q,v"].get_linestyle() == "None" and lines["q,v"].get_marker() == "o"
    np.testing.assert_array_equal(lines["q,v"].get_xdata(), [896, 3584])  # data unchanged
    side = {(t.get_text(), t.xy[0]): (t.get_horizontalalignment(), t.xyann[0]) for t in ax.texts}
    assert side["r=4", 3584] == ("right", -4)  # first set: left of its points
    assert side["r=1", 4096] == ("left", 4)  # second set: right of its points
    fig.canvas.draw()
    boxes = {k: t.get_window_extent() for k, t in
             zip([(t.get_text(), t.xy[0]) for t in ax.texts], ax.texts, strict=True)}
    assert not boxes["r=4", 3584].overlaps(boxes["r=1", 4096])


def test_rank_sweep_error_bars_and_bad_spread():
    res = {"q,v": {1: (896, 10.0), 4: (3584, 40.0)}}
    fig = plots.rank_sweep(res, spread={"q,v": {1: 5.0, 4: 12.0}})
    ax = fig.axes[0]
    # errorbar draws one vertical segment per point, from y - sd to y + sd
    segs = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segs], [[5.0, 15.0], [28.0, 52.0]])
    with pytest.raises(ValueError, match=r"spread\['q,v'\] must give one value per rank"):
        plots.rank_sweep(res, spread={"q,v": {1: 5.0}})
    with pytest.raises(ValueError, match="results is empty"):
        plots.rank_sweep({})


def test_lr_sweep_marks_the_best_lr_in_the_method_colour():
    res = {"full fine-tuning": {1e-2: 0.0, 1e-3: 99.0, 3e-4: 60.0},
           "LoRA r=16": {1e-3: 10.0, 1e-2: 97.0, 3e-3: 90.0}}
    fig = plots.lr_sweep(res)
    ax = fig.axes[0]
    lines = ax.get_lines()
    full, full_best, lora, lora_best = lines
    np.testing.assert_allclose(full.get_xdata(), [3e-4, 1e-3, 1e-2])  # sorted by lr
    np.testing.assert_allclose(full.get_ydata(), [60.0, 99.0, 0.0])
    assert (full_best.get_xdata()[0], full_best.get_ydata()[0]) == (1e-3, 99.0)
    assert (lora_best.get_xdata()[0], lora_best.get_ydata()[0]) == (1e-2, 97.0)
    assert full.get_color() == plots.COLORS["full"] and lora.get_color() == plots.COLORS["lora"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0003", "0.001", "0.003", "0.01"]
    with pytest.raises(ValueError, match="learning rate <= 0"):
        plots.lr_sweep({"LoRA": {0.0: 1.0}})


def test_course_style_keeps_interactive_mode_switched_on_inside():
    """The inline backend turns interactive mode on at the first figure; it must stick."""
    was = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        with plots.course_style():
            matplotlib.interactive(True)  # what the inline backend does on first draw
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(was)


# --- lesson 09: scaling out ---


@pytest.mark.parametrize("n, text", [(512, "512 B"), (14_336, "14.3 kB"),
                                     (1_313_280, "1.3 MB"), (13.48e9, "13.5 GB")])
def test_human_bytes_uses_decimal_units(n, text):
    assert plots.human_bytes(n) == text


def test_comm_bytes_draws_dots_on_log_panels_with_ratios_in_method_colours():
    panels = {"tiny, measured": {"full fine-tuning": 1_313_280, "LoRA": 14_336,
                                 "QLoRA": 14_336},
              "7B, counted": {"full fine-tuning": 13.5e9, "LoRA r=16": 8.4e6}}
    fig = plots.comm_bytes(panels)
    assert [ax.get_title() for ax in fig.axes] == list(panels)
    for ax, rows in zip(fig.axes, panels.values(), strict=True):
        assert ax.get_xscale() == "log"
        assert not ax.patches  # dots, not bars: a bar's length on a log axis means nothing
        dots = [tuple(c.get_offsets()[0]) for c in ax.collections]
        assert dots == [(v, i) for i, v in enumerate(rows.values())]
        assert [t.get_text() for t in ax.get_yticklabels()] == list(rows)
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    assert texts == [["1.3 MB", "14.3 kB, 92x less", "14.3 kB, 92x less"],
                     ["13.5 GB", "8.4 MB, 1,607x less"]]
    colors = [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections]
    assert colors == [plots.COLORS["full"].lower(), plots.COLORS["lora"].lower(),
                      plots.COLORS["qlora"].lower()]
    with pytest.raises(ValueError, match="must be > 0.*'LoRA': 0"):
        plots.comm_bytes({"t": {"full": 1.0, "LoRA": 0}})
    with pytest.raises(ValueError, match="panels is empty"):
        plots.comm_bytes({})
