"""Model configs: the shape of a LLaMA-style decoder, and the configs of real LLaMA models.

:class:`ModelConfig` holds the numbers that decide every parameter and byte count (width,
depth, heads, vocabulary); :data:`CONFIGS` registers published models (from their papers
and config.json files) and the course's own tiny model, by name; :func:`get_config` looks
one up. No torch here: a config is plain data, so counting and estimating code (and the
quiz's generated items) can read one without building anything.

Imports: the standard library only. ``labkit.models`` re-exports these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
