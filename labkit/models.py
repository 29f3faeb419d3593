"""A small LLaMA-style causal language model, built from a config (configs: labkit.configs).

The course fine-tunes :class:`LlamaLM`, a decoder-only transformer built like LLaMA
(Touvron et al., 2023) but small enough to train on a laptop CPU in seconds:

    tokens -> embed_tokens -> n_layers x Block -> norm -> lm_head -> logits

    Block:  x = x + self_attn(input_layernorm(x))            # pre-norm residual
            x = x + mlp(post_attention_layernorm(x))

    self_attn: q_proj, k_proj, v_proj (rotary on q and k), causal attention, o_proj
    mlp:       down_proj(silu(gate_proj(x)) * up_proj(x))     # SwiGLU

Every linear layer is an ``nn.Linear`` without bias and is named as in Hugging Face's
LLaMA (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``,
``down_proj``), so LoRA target names written for a real model work here too.

Attention implementation (pinned): attention is written out by hand,

    scores = (q @ k^T) / sqrt(head_dim)          # (B, H, T, T)
    scores = scores.masked_fill(future, -inf)    # causal mask
    probs  = softmax(scores, dim=-1)             # (B, H, T, T)
    out    = probs @ v                           # (B, H, T, head_dim)

and never goes through ``F.scaled_dot_product_attention``. SDPA picks a flash, memory-
efficient or math kernel depending on device, dtype and shapes, and each saves different
tensors for backward (flash keeps only q, k, v, the output and a log-sum-exp). Writing it
out pins what autograd saves, identically on every machine, so :mod:`labkit.memory` can
count activations from the architecture. Per layer and per sequence it saves, for the
attention core: the rotated q (B, H, T, hd), the rotated k and v after their grouped-query
expansion to H heads (B, H, T, hd each; ``repeat_interleave`` materialises them), and the
softmax output ``probs`` (B, H, T, T), which both the softmax backward and ``probs @ v``
reuse. The T x T matrices are why long sequences cost memory quadratically here.

Grouped-query attention (GQA, Ainslie et al., 2023): ``n_kv_heads`` key/value heads are
shared by groups of ``n_heads // n_kv_heads`` query heads; ``n_kv_heads == n_heads`` is
ordinary multi-head attention (LLaMA-1, LLaMA-2 7B/13B).

Configs of real models live in :mod:`labkit.configs` (re-exported here). :func:`build`
with ``device="meta"`` creates their modules without allocating memory, so
:func:`labkit.lora.config_params` gives exact parameter counts (e.g. 6,738,415,616 for
LLaMA-2 7B) from the architecture itself. :func:`set_gradient_checkpointing` is labkit's one
gradient-checkpointing switch. The shipped pretrained model is loaded by
:func:`load_pretrained` (in :mod:`labkit.pretrained`, re-exported here).

Imports: torch, labkit.configs, labkit._api.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# Configs are plain data in their own module; lessons call them as models.get_config(...).
from labkit._api import lazy_exports
from labkit.configs import CONFIGS, ModelConfig, get_config  # noqa: F401  (re-exported)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_PRETRAINED = "tiny-reverse"


# --------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): ``x / rms(x) * weight``.

    ``rms(x) = sqrt(mean(x_i^2) + eps)`` over the last dimension; no mean subtraction and
    no bias, unlike LayerNorm. Computed in float32 (as LLaMA does) and cast back.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim: a 90-degree turn of each (x1_i, x2_i) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al., 2021), "rotate-half" layout.

    Channel pair i (channels i and i + hd/2) of a vector at position p is rotated by the
    angle ``p * theta^(-2i/hd)``. Rotations keep norms, and the dot product of a rotated q
    at position m with a rotated k at position n depends only on m - n: attention sees
    relative positions.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        # The tables are computed on the CPU, then moved to the default device (a meta build
        # would otherwise import torch's slow Python reference kernels for arange).
        cpu = torch.device("cpu")
        steps = torch.arange(0, head_dim, 2, dtype=torch.float32, device=cpu)
        inv_freq = 1.0 / (theta ** (steps / head_dim))
        positions = torch.arange(max_seq_len, dtype=torch.float32, device=cpu)
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, head_dim)
        here = torch.empty(0).device  # the device being built on
        # Not persistent: derived from the config, so not stored in checkpoints.
        self.register_buffer("cos", angles.cos().to(here), persistent=False)
        self.register_buffer("sin", angles.sin().to(here), persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (B, heads, T, head_dim); positions are offset..offset+T-1."""
        T = x.shape[-2]
        if offset + T > self.max_seq_len:
            raise ValueError(
                f"sequence of {offset + T} tokens is longer than max_seq_len {self.max_seq_len}; "
                "shorten the input or build the model with a larger max_seq_len"
            )
        cos = self.cos[offset:offset + T].to(x.dtype)
        sin = self.sin[offset:offset + T].to(x.dtype)
        return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads; the pinned, written-out kernel."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)   # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, KV, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        if KV != H:  # GQA: k/v head j serves query heads j*g .. j*g+g-1
            g = H // KV
            k = k.repeat_interleave(g, dim=1)                  # (B, H, T, hd)
            v = v.repeat_interleave(g, dim=1)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = scores.softmax(dim=-1)
        out = probs @ v                                        # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * hd))


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer, 2020): ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLM(nn.Module):
    """LLaMA-style causal LM: ``forward(input_ids) -> logits``.

    Args:
        config: a :class:`ModelConfig`.

    Shapes: ``input_ids`` (B, T) int64 -> logits (B, T, V); logits[:, t] predict token t+1.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
        if config.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Gradient checkpointing (Chen et al., 2016): when True (and training with grad),
        # each Block keeps only its input for backward and recomputes its own activations
        # during backward. Less memory, about one extra forward of compute. Same gradients.
        self.gradient_checkpointing = False

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # GPT-2 / LLaMA style: N(0, 0.02) for every matrix; RMSNorm weights stay at 1.
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt:  # non-reentrant: works with frozen inputs and saved-tensor hooks
                x = torch.utils.checkpoint.checkpoint(layer, x, self.rope, use_reentrant=False)
            else:
                x = layer(x, self.rope)
        x = self.norm(x)
        if self.lm_head is None:
            return x @ self.embed_tokens.weight.t()
        return self.lm_head(x)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def _skip_init():
    """Make ``nn.init``'s fills no-ops: meta tensors have no values, and drawing "random"
    numbers for them still walks torch's Python reference kernels (seconds for a 65B model)."""
    names = ("kaiming_uniform_", "uniform_", "normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build(config: str | ModelConfig, device: str | torch.device = "cpu",
          dtype: torch.dtype | None = None) -> LlamaLM:
    """Build a model from a config or a registered name.

    ``device="meta"`` allocates nothing: shapes only, so a 70B model "builds" instantly,
    for counting parameters and estimating memory.

    ``dtype`` other than float32 (e.g. ``torch.bfloat16`` before quantizing on a GPU)
    builds straight in that dtype: the device never holds a float32 copy (a 7B model in
    float32 is 27 GB, in bf16 13.5 GB). The random init is then drawn in that dtype, so
    its values differ from a float32 build cast afterwards (same distribution).
    """
    cfg = get_config(config)
    dev = torch.device(device)
    if dev.type == "meta" or dtype in (None, torch.float32):
        with torch.device(dev), (_skip_init() if dev.type == "meta" else contextlib.nullcontext()):
            model = LlamaLM(cfg)
        return model if dtype is None else model.to(dtype)
    return _build_low_precision(cfg, dev, dtype)


def _build_low_precision(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> LlamaLM:
    """Shapes on the meta device, storage allocated once in ``dtype``, then initialised in
    place as :class:`LlamaLM` does (N(0, 0.02) matrices, unit norms, RoPE tables computed in
    float32 and cast, as ``.to(dtype)`` would)."""
    with torch.device("meta"), _skip_init():
        model = LlamaLM(cfg).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, RotaryEmbedding):
                fresh = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
                m.cos.copy_(fresh.cos)
                m.sin.copy_(fresh.sin)
        model.apply(LlamaLM._init_weights)
    return model



def set_gradient_checkpointing(model: nn.Module, enabled: bool = True, blocks: str = "layers"
                               ) -> int:
    """labkit's one gradient-checkpointing switch: recompute each block in backward.

    With it on, each transformer block keeps only its input for backward and recomputes its
    own activations there (Chen et al., 2016): activation memory drops from
    O(layers x block activations) to O(layers x one tensor + one block), for about one extra
    forward of compute; gradients are the same. Non-reentrant ``torch.utils.checkpoint``, so
    it works with a frozen input and with saved-tensor hooks; active only while training
    with gradients enabled.

    A labkit :class:`LlamaLM` anywhere in ``model`` (also inside a PEFT wrapper) gets its
    ``gradient_checkpointing`` flag set. Any other model has the forward of every block in
    its ``nn.ModuleList`` called ``blocks`` wrapped once; ``enabled`` then toggles the wraps.

    Returns:
        The number of blocks checkpointed (0 when switched off).

    Raises:
        ValueError: neither a LlamaLM nor an ``nn.ModuleList`` called ``blocks``.
    """
    ours = [m for m in model.modules() if isinstance(m, LlamaLM)]
    for m in ours:
        m.gradient_checkpointing = bool(enabled)
    if ours:
        return sum(len(m.layers) for m in ours) if enabled else 0
    lists = [m for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] == blocks]
    if not lists:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                       if isinstance(m, nn.ModuleList)})
        raise ValueError(f"no labkit LlamaLM and no nn.ModuleList called {blocks!r} to "
                         f"checkpoint; the model has {have or 'none'}")
    n = 0
    for block in (b for blist in lists for b in blist):
        if not hasattr(block, "_labkit_checkpoint"):
            inner = block.forward

            @functools.wraps(inner)
            def forward(*args, _inner=inner, _block=block, **kwargs):
                if _block._labkit_checkpoint and _block.training and torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False,
                                                             **kwargs)
                return _inner(*args, **kwargs)

            block.forward = forward
        block._labkit_checkpoint = bool(enabled)
        n += bool(enabled)
    return n

# The checkpoint files live in labkit.pretrained (which imports this module); renamed names
# keep a deprecated alias. See labkit._api.
_EXPORTS = {"labkit.pretrained": ["Pretrained", "load_pretrained", "save_pretrained",
                                  "sha256_file"]}
_DEPRECATED = {"count_params": "labkit.lora.config_params",
               "save_checkpoint": "labkit.models.save_pretrained"}
__getattr__, __dir__, _lazy_all = lazy_exports(__name__, _EXPORTS, _DEPRECATED)
