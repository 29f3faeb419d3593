"""The interactive explorers of the lessons, built on ipywidgets.

Each explorer is an object whose display is *one* output bundle: the live widget for
JupyterLab plus a plain-text rendering of its starting state for front ends without
widgets (a terminal, a static page, nbval, which compares that text). So a stored lesson
shows readable numbers everywhere, and the widget is never "Error displaying widget"
text in a place that cannot run it.
"""

from __future__ import annotations

import html

import ipywidgets as W


class Explorer:
    """Base class: a widget box plus a text fallback that mirrors its current state."""

    box: W.Widget

    def text(self) -> str:  # pragma: no cover - every explorer overrides it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = self.text()
        return bundle


def lora_counts(d: int, k: int, r: int) -> dict[str, float]:
    """The numbers the rank explorer shows for a d x k layer and rank r.

    Returns:
        ``frozen`` = d k, ``lora`` = r (d + k) (A is r x k, B is d x r),
        ``share`` = lora / frozen in percent, ``ratio`` = frozen / lora.
    """
    for name, v in (("d", d), ("k", k), ("r", r)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if r > min(d, k):
        raise ValueError(
            f"r = {r} exceeds min(d, k) = {min(d, k)}: a rank above the smaller side adds "
            "parameters without adding expressive power; choose r <= min(d, k)"
        )
    frozen, lora = d * k, r * (d + k)
    return {"frozen": frozen, "lora": lora, "share": 100 * lora / frozen, "ratio": frozen / lora}


class RankExplorer(Explorer):
    """Sliders for a layer's d, k and the LoRA rank r; shows what trains and what is frozen."""

    def __init__(self, d: int = 4096, k: int = 4096, r: int = 8):
        lora_counts(d, k, r)  # validate the starting point
        sizes = [2**i for i in range(6, 15)]  # 64 .. 16384
        self.d = W.SelectionSlider(
            options=sizes, value=d if d in sizes else 4096, description="d (out)"
        )
        self.k = W.SelectionSlider(
            options=sizes, value=k if k in sizes else 4096, description="k (in)"
        )
        self.r = W.SelectionSlider(
            options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=r, description="rank r"
        )
        self.out = W.HTML()
        for s in (self.d, self.k, self.r):
            s.observe(self._update, names="value")
        self.box = W.VBox([W.HBox([self.d, self.k, self.r]), self.out])
        self._update()

    def _numbers(self) -> dict[str, float]:
        d, k = self.d.value, self.k.value
        return lora_counts(d, k, min(self.r.value, d, k))

    def text(self) -> str:
        d, k = self.d.value, self.k.value
        r = min(self.r.value, d, k)
        n = self._numbers()
        return (
            f"layer {d} x {k}, rank {r}\n"
            f"  frozen W (d x k):        {n['frozen']:>12,}\n"
            f"  trainable A (r x k) + B (d x r): {n['lora']:>6,}  = {n['share']:.2f} % of W\n"
            f"  W has {n['ratio']:,.0f} x more parameters than the adapter"
        )

    def _update(self, *_):
        n = self._numbers()
        width = max(0.5, min(100.0, n["share"]))
        self.out.value = (
            f"<pre>{html.escape(self.text())}</pre>"
            f"<div style='width:420px;background:#8C8C8C;height:14px'>"
            f"<div style='width:{width:.1f}%;background:#DD8452;height:14px'></div></div>"
            f"<small>orange: the trainable share, grey: the frozen weight</small>"
        )


def rank_explorer(d: int = 4096, k: int = 4096, r: int = 8) -> RankExplorer:
    """An explorer of LoRA's parameter count for one layer (lesson 01)."""
    return RankExplorer(d, k, r)
