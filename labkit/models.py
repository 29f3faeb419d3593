"""A small LLaMA-style causal language model, and the configs of real LLaMA models.

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

Configs of real models live in :data:`CONFIGS`. :func:`build` with ``device="meta"``
creates their modules without allocating memory, so :func:`count_params` gives exact
parameter counts (e.g. 6,738,415,616 for LLaMA-2 7B) from the architecture itself.

The shipped pretrained model (:func:`load_pretrained`) is ``labkit/checkpoints/
tiny-reverse.safetensors``, produced by ``scripts/pretrain.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_PRETRAINED = "tiny-reverse"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a LLaMA-style decoder.

    Attributes:
        vocab_size: number of tokens V.
        hidden_size: model width d (the residual stream).
        intermediate_size: SwiGLU hidden width f (gate/up project d -> f, down f -> d).
        n_layers: number of transformer blocks L.
        n_heads: query heads H; ``head_dim = hidden_size // n_heads``.
        n_kv_heads: key/value heads (GQA); ``None`` means ``n_heads`` (plain MHA).
        max_seq_len: longest sequence the rotary tables cover.
        rope_theta: rotary base (10,000 in LLaMA-1/2, 500,000 in Llama-3).
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share the input embedding with the output head.
        name: a label, not used by the maths.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for f in ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads",
                  "n_kv_heads", "max_seq_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{f} must be a positive int, got {v!r}")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}; "
                "pick n_heads that divides it (head_dim = hidden_size // n_heads)"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}; "
                "in grouped-query attention each k/v head serves a whole group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Output width of ``k_proj`` and ``v_proj``: ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown ModelConfig keys {extra}; known keys: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


#: Configs of published models (from their papers / config.json files) plus the course's
#: own tiny model. All linear widths are multiples of 64 (4-bit blocks of 64 fit exactly).
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        # The course model: 328,320 parameters, 1.3 MB in fp32.
        ModelConfig(128, 128, 256, 2, 4, 2, max_seq_len=32, name="tiny"),
        ModelConfig(32000, 4096, 11008, 32, 32, 32, max_seq_len=4096, norm_eps=1e-5,
                    name="llama-2-7b"),
        ModelConfig(32000, 5120, 13824, 40, 40, 40, max_seq_len=4096, name="llama-2-13b"),
        ModelConfig(32000, 8192, 28672, 80, 64, 8, max_seq_len=4096, name="llama-2-70b"),
        ModelConfig(32000, 4096, 11008, 32, 32, 32, max_seq_len=2048, norm_eps=1e-6,
                    name="llama-1-7b"),
        ModelConfig(32000, 5120, 13824, 40, 40, 40, max_seq_len=2048, norm_eps=1e-6,
                    name="llama-1-13b"),
        ModelConfig(32000, 6656, 17920, 60, 52, 52, max_seq_len=2048, norm_eps=1e-6,
                    name="llama-1-33b"),
        ModelConfig(32000, 8192, 22016, 80, 64, 64, max_seq_len=2048, norm_eps=1e-6,
                    name="llama-1-65b"),
        ModelConfig(128256, 4096, 14336, 32, 32, 8, max_seq_len=8192, rope_theta=500000.0,
                    name="llama-3-8b"),
        ModelConfig(128256, 8192, 28672, 80, 64, 8, max_seq_len=8192, rope_theta=500000.0,
                    name="llama-3-70b"),
        ModelConfig(128256, 2048, 8192, 16, 32, 8, max_seq_len=8192, rope_theta=500000.0,
                    tie_embeddings=True, name="llama-3.2-1b"),
        ModelConfig(32000, 4096, 14336, 32, 32, 8, max_seq_len=8192, rope_theta=10000.0,
                    name="mistral-7b"),
        ModelConfig(32000, 2048, 5632, 22, 32, 4, max_seq_len=2048, name="tinyllama-1.1b"),
    ]
}


def get_config(name: str | ModelConfig) -> ModelConfig:
    """The registered config called ``name`` (a ``ModelConfig`` passes through).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(name, ModelConfig):
        return name
    try:
        return CONFIGS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model config {name!r}; known configs: {', '.join(sorted(CONFIGS))}"
        ) from None


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


def count_params(config: str | ModelConfig) -> int:
    """Exact parameter count of a config, by building it on the meta device and summing."""
    model = build(config, device="meta")
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Pretrained(NamedTuple):
    """What :func:`load_pretrained` returns; unpacks as ``model, tokenizer, card``."""

    model: LlamaLM
    tokenizer: object  # labkit.data.Tokenizer
    card: dict


def save_checkpoint(model: LlamaLM, path: str | Path) -> str:
    """Save weights as safetensors (config in the header metadata); returns the sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(model.config.to_dict())})
    return sha256_file(path)


def load_pretrained(name: str = DEFAULT_PRETRAINED, directory: str | Path | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                    ) -> Pretrained:
    """Load the course's pretrained model and check it is the one its card describes.

    Reads ``<directory>/<name>.json`` (the card: config, tasks, metrics, sha256) and
    ``<directory>/<name>.safetensors``; verifies the file's sha256 against the card and
    the tensors' names and shapes against the card's config.

    Args:
        name: checkpoint name (default ``"tiny-reverse"``).
        directory: where the files are; default ``labkit/checkpoints``.
        device, dtype: where and in which dtype to put the model.

    Returns:
        ``Pretrained(model, tokenizer, card)``, the model in eval mode.

    Raises:
        FileNotFoundError: no such checkpoint (lists the ones present).
        ValueError: the hash or the config does not match the card.
    """
    from safetensors.torch import load_file

    from labkit import data

    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    card_path, st_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not card_path.exists() or not st_path.exists():
        have = sorted(p.stem for p in directory.glob("*.safetensors"))
        raise FileNotFoundError(
            f"no checkpoint {name!r} in {directory} (need {name}.json and {name}.safetensors); "
            f"present: {have or 'none'}. Create it with `python scripts/pretrain.py`."
        )
    card = json.loads(card_path.read_text())
    digest = sha256_file(st_path)
    if digest != card.get("sha256"):
        raise ValueError(
            f"checkpoint {st_path} does not match its card: sha256 is {digest}, the card "
            f"{card_path.name} says {card.get('sha256')}. The file is corrupt or was changed; "
            "restore it (git checkout) or re-run `python scripts/pretrain.py`."
        )
    cfg = ModelConfig.from_dict(card["config"])
    model = build(cfg, device="cpu")
    state = load_file(str(st_path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diffs = [f"{k}: card config wants {expected.get(k)}, file has {got.get(k)}"
                 for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
        raise ValueError(
            f"checkpoint {st_path.name} does not fit the config in {card_path.name} "
            f"({len(diffs)} tensors differ): " + "; ".join(diffs[:5])
            + ". Card and weights come from different runs; re-run `python scripts/pretrain.py`."
        )
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype).eval()
    return Pretrained(model, data.Tokenizer(), card)
