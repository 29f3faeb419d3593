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

from labkit.lora.counts import adapter_params


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
    frozen, lora = d * k, adapter_params(d, k, r)
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


# --- lesson 06: the memory calculator ---------------------------------------------------

#: What each method of the calculator means (passed to :func:`labkit.memory.estimate`):
#: 16-bit weights and compute, AdamW; full fine-tuning keeps fp32 moments (12 B/param
#: before activations); LoRA and QLoRA put bf16 adapters on every linear layer of the
#: blocks (QLoRA paper); QLoRA stores the base in NF4 + double quantization and uses
#: paged AdamW (counted on the GPU: the worst case).
CALC_METHODS = {
    "full": dict(method="full", weight_dtype="bf16", state_dtype="fp32", optimizer="adamw"),
    "LoRA": dict(method="lora", weight_dtype="bf16", adapter_dtype="bf16", optimizer="adamw",
                 targets="all-linear"),
    "QLoRA": dict(method="qlora", weight_dtype="nf4", compute_dtype="bf16",
                  adapter_dtype="bf16", optimizer="paged_adamw", targets="all-linear"),
}
CALC_MODELS = ("llama-2-7b", "llama-3-8b", "llama-2-13b", "llama-1-33b", "llama-1-65b",
               "llama-2-70b", "tinyllama-1.1b", "mistral-7b")


def memory_numbers(model: str = "llama-2-7b", method: str = "QLoRA", r: int = 16,
                   batch: int = 1, seq_len: int = 512, checkpointing: bool = True,
                   device: str = "16 GB T4") -> dict:
    """The numbers the memory calculator shows: breakdown, total, fit, dominant part.

    Returns:
        ``{"parts": {component: GB}, "total": GB, "device_gib": GiB, "device_gb": GB,
        "fits": bool, "spare": GB (negative when it does not fit), "dominant": component}``,
        GB = 10^9 B. The device's memory is :data:`labkit.plots.DEVICES`' GiB (2^30 B, as
        GPU memory is sold) converted to GB; nothing is subtracted for the CUDA context.

    Raises:
        ValueError: unknown model, method or device; bad numbers (from the estimator).
    """
    from labkit import memory, plots

    if method not in CALC_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(CALC_METHODS)}")
    if device not in plots.DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(plots.DEVICES)}")
    est = memory.estimate(model, batch=batch, seq_len=seq_len, r=r,
                          gradient_checkpointing=checkpointing, **CALC_METHODS[method])
    gib = plots.DEVICES[device]
    gb = gib * memory.GiB / memory.GB
    parts = {k: v / memory.GB for k, v in est.stack().items()}
    total = est.total / memory.GB
    return {"parts": parts, "total": total, "device_gib": gib, "device_gb": gb,
            "fits": memory.fits(est, gib), "spare": gb - total,
            "dominant": memory.dominant(est)}


class MemoryCalculator(Explorer):
    """Will it fit? Model, method, rank, batch, sequence length, checkpointing and device."""

    def __init__(self, model: str = "llama-2-7b", method: str = "QLoRA", r: int = 16,
                 batch: int = 1, seq_len: int = 512, checkpointing: bool = True,
                 device: str = "16 GB T4"):
        from labkit import plots

        memory_numbers(model, method, r, batch, seq_len, checkpointing, device)  # validate
        self.model = W.Dropdown(options=list(dict.fromkeys((model, *CALC_MODELS))),
                                value=model, description="model")
        self.method = W.ToggleButtons(options=list(CALC_METHODS), value=method,
                                      description="method")
        ranks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, r})
        self.r = W.SelectionSlider(options=ranks, value=r, description="rank r")
        self.batch = W.IntSlider(value=batch, min=1, max=max(64, batch), description="batch")
        lens = sorted({128, 256, 512, 1024, 2048, 4096, seq_len})
        self.seq_len = W.SelectionSlider(options=lens, value=seq_len, description="seq len")
        self.checkpointing = W.Checkbox(value=checkpointing, description="checkpointing")
        self.device = W.Dropdown(options=list(plots.DEVICES), value=device,
                                 description="device")
        self.out = W.HTML()
        controls = [self.model, self.method, self.r, self.batch, self.seq_len,
                    self.checkpointing, self.device]
        for c in controls:
            c.observe(self._update, names="value")
        self.box = W.VBox([W.HBox(controls[:2]), W.HBox(controls[2:5]),
                           W.HBox(controls[5:]), self.out])
        self._update()

    def _numbers(self) -> dict:
        return memory_numbers(self.model.value, self.method.value, self.r.value,
                              self.batch.value, self.seq_len.value, self.checkpointing.value,
                              self.device.value)

    def text(self) -> str:
        n = self._numbers()
        m = self.method.value
        rank = f", r={self.r.value}" if m != "full" else ""
        lines = [f"{self.model.value}, {m}{rank}, batch {self.batch.value} x "
                 f"{self.seq_len.value} tokens, checkpointing "
                 f"{'on' if self.checkpointing.value else 'off'}"]
        lines += [f"  {k:<12}{v:9.2f} GB" for k, v in n["parts"].items()]
        lines.append(f"  {'total':<12}{n['total']:9.2f} GB")
        dev = f"{self.device.value} ({n['device_gib']:g} GiB = {n['device_gb']:.1f} GB)"
        verdict = (f"fits the {dev}: {n['spare']:.1f} GB to spare" if n["fits"]
                   else f"does NOT fit the {dev}: {-n['spare']:.1f} GB short")
        lines.append(f"  -> {verdict} (before the CUDA context); largest part: "
                     f"{n['dominant']}")
        return "\n".join(lines)

    def _update(self, *_):
        from labkit import plots

        try:
            n = self._numbers()
        except ValueError as exc:  # e.g. a sequence longer than the model takes: say so
            self.out.value = f"<pre>{html.escape(str(exc))}</pre>"
            return
        scale = max(n["total"], n["device_gb"])
        segs = "".join(
            f"<div title='{k}' style='width:{100 * v / scale:.2f}%;background:"
            f"{plots.COLORS[k]};height:14px;display:inline-block'></div>"
            for k, v in n["parts"].items())
        self.out.value = (
            f"<pre>{html.escape(self.text())}</pre>"
            f"<div style='width:480px;position:relative;white-space:nowrap'>{segs}"
            f"<div style='position:absolute;left:{100 * n['device_gb'] / scale:.2f}%;top:-3px;"
            f"width:2px;height:20px;background:black'></div></div>"
            f"<small>weights, gradients, optimizer, activations; black line: the device</small>")


def memory_calculator(**kwargs) -> MemoryCalculator:
    """The "will it fit?" calculator of lesson 06 (arguments as :func:`memory_numbers`)."""
    return MemoryCalculator(**kwargs)
