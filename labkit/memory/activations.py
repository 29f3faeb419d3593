"""The activations of a training step: the tensors autograd saves, from the architecture.

:func:`activation_terms` names every tensor the forward of :mod:`labkit.models`' LLaMA-style
model saves for backward, op by op and block by block (:func:`_block_terms`), given what
trains (full, LoRA or QLoRA, which targets), the dtypes, gradient checkpointing and
autocast; nothing is allocated. :func:`labkit.memory.estimate` adds these to the weights,
gradients and optimizer state.

Imports :mod:`labkit.memory.breakdown` only (dtypes and input checks; no torch of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.memory.breakdown import (
    BLOCK_LINEARS,
    FLOAT_DTYPES,
    METHODS,
    _dtype,
    _get_config,
    _nbytes,
    _positive_int,
    _targets,
)


@dataclass(frozen=True)
class _Setup:
    """What the activation accounting needs to know about a method."""

    full: bool               # every parameter trains (norms, embedding, head included)
    targets: tuple[str, ...]  # linears with a LoRA adapter
    r: int
    s: int                   # bytes per element of activations (compute dtype)
    s_adapter: int           # bytes per element of the adapters
    cast: bool               # adapter dtype != compute dtype: each adapter casts its input
    autocast: bool = False   # the step runs under torch.autocast (see activation_terms)
    dora: bool = False       # the adapters are DoRA's (see activation_terms)


def activation_terms(config, batch: int, seq_len: int, *, method: str = "full",
                     compute_dtype="fp32", adapter_dtype="fp32", r: int = 8,
                     targets=BLOCK_LINEARS, gradient_checkpointing: bool = False,
                     autocast: bool = False, use_dora: bool = False
                     ) -> tuple[dict[str, int], int]:
    """Named activation terms (bytes saved for backward) and the ``recompute`` term.

    Derived from :mod:`labkit.models`' code, op by op, with N = batch * seq_len tokens,
    d hidden, f intermediate, H heads, T seq_len, V vocab, s bytes per compute element.
    An op saves a tensor only when it needs it for the gradient of an input that
    requires grad, so what is saved depends on what trains (full vs LoRA) and, before the
    first adapter, on nothing requiring grad at all. Per op:

    ======================  ==========================================================
    embedding               the ids, N * 8, if the embedding trains
    RMSNorm(x)              x in fp32 (N d 4) and rsqrt (N * 4) if x requires grad;
                            the normalised y (N d s) if the norm's weight trains
    linear, trainable W     its input (shared by q/k/v, and by gate/up: one storage)
    LoRA linear             the input (a cast copy N k s_a per layer when the adapter dtype
                            differs, without autocast) and A's output, N r s_a
    DoRA linear (d outputs) also W x and s B A x (the two products with the scale g,
                            2 N d s_a), the detached norm and g (2 d s_a), and g - 1
                            (d s_a) when the layer's input requires grad
    q @ k^T                 k expanded to H heads (N d s) if q requires grad; q (N d s) if
                            k does
    causal mask             T * T bool, a fresh one per layer
    softmax                 probs, B H T^2 s (also reused by probs @ v)
    probs @ v               v expanded to H heads (N d s) if probs requires grad
    o_proj input            the heads merged back, a copy (N d s)
    SwiGLU                  gate output (silu's input), up output, silu output: 3 N f s;
                            down_proj's input N f s if it trains
    head + loss             the fp32 log-softmax N V 4, the labels N * 8, a 4-byte scalar
    ======================  ==========================================================

    With ``gradient_checkpointing`` each block saves only its input (N d s) in the forward;
    the returned ``recompute`` is the largest block's own terms (re-run in backward).

    With ``autocast`` (the step runs under ``torch.autocast`` in the compute dtype, as
    :func:`labkit.train.train` does with ``dtype=``, and adapters in another dtype), each
    adapter's matmuls run in the compute dtype: the input, already in that dtype, is saved as
    it is (one storage per input, as for a trainable linear), A's output takes N r s, and
    autocast's compute-dtype copies of B (always) and of A (when the input requires grad)
    are saved too. (Before labkit passed the input as it is, each adapter saved a cast copy,
    N k s per adapter; on CUDA those copies also outlived the layer, 438.5 MiB of a 283M
    model's peak; see benchmarks/README.md.) On CUDA, autocast also runs softmax in float32,
    which keeps probs in float32 beside a compute-dtype copy; that is not modelled (it adds
    at most B H T^2 * 4 bytes per block). DoRA (``use_dora``) is modelled without autocast.
    """
    cfg = _get_config(config)
    B, T = _positive_int("batch", batch), _positive_int("seq_len", seq_len)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    cd = _dtype(compute_dtype, "compute dtype", FLOAT_DTYPES)
    s = _nbytes(cd)
    ad = _dtype(adapter_dtype, "adapter dtype", FLOAT_DTYPES)
    full = method == "full"
    if autocast and full:
        raise ValueError("autocast is modelled for LoRA and QLoRA adapters only; full "
                         "fine-tuning runs in the weights' dtype here")
    if use_dora and (full or autocast):
        raise ValueError("use_dora is modelled for LoRA / QLoRA adapters without autocast; "
                         "pass autocast=False (or use_dora=False)")
    st = _Setup(full, () if full else _targets(targets), _positive_int("r", r), s,
                _nbytes(ad), ad != cd, bool(autocast), bool(use_dora))
    N, d, V = B * T, cfg.hidden_size, cfg.vocab_size
    terms: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        if n:
            terms[name] = terms.get(name, 0) + n

    rg = full  # does the residual stream require grad? (embedding output)
    add("embedding ids", 8 * N if full else 0)
    blocks = []
    for _ in range(cfg.n_layers):
        bt, rg = _block_terms(cfg, B, T, st, rg)
        blocks.append(bt)
        if gradient_checkpointing:
            add("block inputs (checkpoints)", N * d * s)
        else:
            for k, v in bt.items():
                add(k, v)
    # final norm, head and loss
    if rg:
        add("norm x (fp32)", N * d * 4)
        add("norm rsqrt", N * 4)
    if full:
        add("norm y", N * d * s)
        add("lm_head input", N * d * s)
    if rg or full:
        add("log-softmax (fp32)", N * V * 4)
        add("labels", N * 8)
        add("loss scalar", 4)
    recompute = max(sum(bt.values()) for bt in blocks) if gradient_checkpointing else 0
    return terms, recompute


def _block_terms(cfg, B: int, T: int, st: _Setup, rg: bool) -> tuple[dict[str, int], bool]:
    """One block's saved tensors given whether its input requires grad; returns the
    terms and whether its output requires grad."""
    N, d, f, H = B * T, cfg.hidden_size, cfg.intermediate_size, cfg.n_heads
    s, terms = st.s, {}
    kv = cfg.n_kv_heads * (d // H)
    width_out = {"q_proj": d, "k_proj": kv, "v_proj": kv, "o_proj": d, "gate_proj": f,
                 "up_proj": f, "down_proj": d}

    def add(name: str, n: int) -> None:
        if n:
            terms[name] = terms.get(name, 0) + n

    def norm(x_rg: bool) -> bool:
        if x_rg:
            add("norm x (fp32)", N * d * 4)
            add("norm rsqrt", N * 4)
        if st.full:
            add("norm y", N * d * s)
        return x_rg or st.full

    def linears(names, k: int, in_rg: bool, what: str) -> dict[str, bool]:
        """Saved inputs of linears sharing one input of width k; their outputs' grad."""
        saved_input = False
        out = {}
        for n in names:
            lora = n in st.targets
            if st.full or (lora and not st.cast):
                saved_input = True
            if lora and st.cast and st.autocast:
                # The input is already in the compute dtype (the modelled autocast runs a
                # compute-dtype base), and LoRALinear hands it to A as it is: A's matmul
                # saves that one storage, shared with the other linears that read it. A's
                # output is in the compute dtype, and autocast's weight copies are saved.
                saved_input = True
                add("adapter A outputs", N * st.r * s)
                add("adapter weight casts", (width_out[n] + (k if in_rg else 0)) * st.r * s)
            elif lora:
                if st.cast:
                    add("adapter input casts", N * k * st.s_adapter)
                add("adapter A outputs", N * st.r * st.s_adapter)
            if lora and st.dora:  # labkit.lora.dora.dora_forward: (g-1) W x + g s B A x
                add("dora W x and s B A x", 2 * N * width_out[n] * st.s_adapter)
                add("dora norms and scales", (3 if in_rg else 2) * width_out[n] * st.s_adapter)
            out[n] = in_rg or st.full or lora
        if saved_input:
            add(what, N * k * s)
        return out

    n_rg = norm(rg)
    qkv = linears(("q_proj", "k_proj", "v_proj"), d, n_rg, "attn-norm output")
    q_rg, k_rg, v_rg = qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]
    if q_rg:
        add("k (H heads)", N * d * s)
    if k_rg:
        add("q", N * d * s)
    scores_rg = q_rg or k_rg
    if scores_rg:
        add("causal mask", T * T)
    if scores_rg or v_rg:
        add("probs", B * H * T * T * s)
    if scores_rg:
        add("v (H heads)", N * d * s)
    attn_rg = scores_rg or v_rg
    o_rg = linears(("o_proj",), d, attn_rg, "o_proj input")["o_proj"]
    x_rg = rg or o_rg
    n2_rg = norm(x_rg)
    gu = linears(("gate_proj", "up_proj"), d, n2_rg, "mlp-norm output")
    g_rg, u_rg = gu["gate_proj"], gu["up_proj"]
    if g_rg:
        add("gate output", N * f * s)
        add("up output", N * f * s)
    if u_rg:
        add("silu output", N * f * s)
    p_rg = g_rg or u_rg
    down_rg = linears(("down_proj",), f, p_rg, "down_proj input")["down_proj"]
    return terms, x_rg or down_rg

