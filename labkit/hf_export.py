"""A labkit model as a Hugging Face model directory, and back; adapters between the two.

:func:`export_hf` writes what ``AutoModelForCausalLM.from_pretrained(directory)`` and
``AutoTokenizer.from_pretrained(directory)`` read, offline::

    config.json               LlamaForCausalLM, numbers from labkit's ModelConfig
    generation_config.json    bos / eos / pad ids for model.generate
    model.safetensors         the weights under Hugging Face's names
    tokenizer.json, tokenizer_config.json, chat_template.jinja

labkit's :class:`~labkit.models.LlamaLM` computes what transformers' ``LlamaForCausalLM``
computes, piece by piece, so only names and numbers need translating:

=========================  ==============================  ==================================
labkit                      transformers                    the same maths because
=========================  ==============================  ==================================
``RMSNorm(eps)``            ``LlamaRMSNorm``, rms_norm_eps  both: fp32, x * rsqrt(mean x^2 +
                                                            eps), cast back, times weight
``RotaryEmbedding``         rope_parameters default,        both "rotate half": channel i
                            rope_theta                      pairs with i + head_dim / 2
GQA ``repeat_interleave``   num_key_value_heads,            k/v head j serves query heads
                            ``repeat_kv``                   j*g .. j*g + g - 1 in both
``MLP`` (SwiGLU)            hidden_act "silu", mlp_bias     down(silu(gate x) * up x)
``nn.Linear(bias=False)``   attention_bias false
``tie_embeddings``          tie_word_embeddings             lm_head = embed_tokens.weight
``max_seq_len``             max_position_embeddings
=========================  ==============================  ==================================

The one naming difference: transformers wraps the decoder in a ``model`` attribute
(``model.layers.0.self_attn.q_proj``) where labkit's is flat (``layers.0.self_attn.q_proj``);
``lm_head`` is at the top in both. An adapter file carries the module paths in its keys, so
one saved on one side is renamed by :func:`adapter_to_labkit` / :func:`adapter_to_hf`
before the other side loads it.

Imports: json, torch, safetensors, :mod:`labkit.models`, :mod:`labkit.pretrained`,
:mod:`labkit.lora.files`, :mod:`labkit.hf_tokenizer` (only when no tokenizer is given).
"""

from __future__ import annotations

import json
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from safetensors.torch import load_file, save_file

from labkit.configs import ModelConfig
from labkit.lora.files import CONFIG_NAME, DIGEST_KEY, PREFIX, WEIGHTS_NAME, _tensors_sha256
from labkit.models import LlamaLM, build

HF_DECODER = "model."  # transformers' LlamaForCausalLM keeps the decoder in .model


def hf_config(cfg: ModelConfig, *, bos_token_id: int, eos_token_id: int, pad_token_id: int,
              dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` of a transformers ``LlamaForCausalLM`` with labkit's maths."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def config_from_hf(d: dict, name: str = "from-hf") -> ModelConfig:
    """labkit's :class:`ModelConfig` from a transformers LLaMA ``config.json`` dict.

    Raises:
        ValueError: a config whose maths labkit's LlamaLM does not have (another
            architecture, biases, another activation, scaled RoPE, a head_dim that is not
            hidden_size // heads); the message lists every difference.
    """
    theta = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = (d.get("rope_parameters") or {}).get("rope_type", "default")
    problems = [f"{k}={d.get(k)!r} (labkit: {want!r})" for k, want in
                [("model_type", "llama"), ("hidden_act", "silu"), ("attention_bias", False),
                 ("mlp_bias", False)] if d.get(k, want) != want]
    if rope_type != "default" or d.get("rope_scaling"):
        problems.append(f"rope_type={rope_type!r} / rope_scaling (labkit: plain RoPE)")
    heads = d.get("num_attention_heads", 0)
    if d.get("head_dim") not in (None, d.get("hidden_size", 0) // max(heads, 1)):
        problems.append(f"head_dim={d['head_dim']} (labkit: hidden_size // num_attention_heads)")
    if problems:
        raise ValueError("this transformers config has maths labkit's LlamaLM lacks: "
                         + "; ".join(problems) + ". Load it with transformers instead.")
    return ModelConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], n_layers=d["num_hidden_layers"],
        n_heads=heads, n_kv_heads=d.get("num_key_value_heads") or heads,
        max_seq_len=d["max_position_embeddings"], rope_theta=float(theta),
        norm_eps=d["rms_norm_eps"], tie_embeddings=d.get("tie_word_embeddings", False),
        name=name)


def to_hf_key(key: str) -> str:
    """``layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj.weight``."""
    return key if key.startswith("lm_head") else HF_DECODER + key


def to_labkit_key(key: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``layers.0.mlp.up_proj.weight``."""
    return key.removeprefix(HF_DECODER)


def export_hf(directory: str | Path, model: LlamaLM | None = None, tokenizer=None) -> Path:
    """Write ``model`` (default: the shipped pretrained model) as a transformers directory.

    Args:
        directory: created if missing; lessons pass a temporary directory.
        model: a labkit :class:`LlamaLM` (any config; weights saved in their dtype).
        tokenizer: a transformers tokenizer to save beside it; default
            :func:`labkit.hf_tokenizer.course_tokenizer`, for the course's 128-id vocabulary.

    Returns:
        The directory.

    Raises:
        TypeError: ``model`` is not a labkit LlamaLM (a LoRA-wrapped one: merge first).
        ValueError: a tokenizer with more ids than the model's vocabulary, or no tokenizer
            for a model whose vocabulary is not the course's.
    """
    if model is None:
        from labkit.pretrained import load_pretrained

        model = load_pretrained().model
    if type(model) is not LlamaLM:
        raise TypeError(f"export_hf takes a labkit LlamaLM, got {type(model).__name__}; for a "
                        "model with adapters, merge them first (labkit.lora.unload_lora)")
    cfg = model.config
    if tokenizer is None:
        if cfg.vocab_size != 128:
            raise ValueError(f"the model's vocabulary has {cfg.vocab_size} ids, not the "
                             "course tokenizer's 128; pass the tokenizer it was trained with")
        from labkit.hf_tokenizer import course_tokenizer

        tokenizer = course_tokenizer(cfg.max_seq_len)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model only "
                         f"{cfg.vocab_size} embeddings; build the model with vocab_size >= "
                         f"{len(tokenizer)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {to_hf_key(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    dtype = model.embed_tokens.weight.dtype
    _write_json(out / "config.json", hf_config(cfg, **ids, dtype=dtype))
    _write_json(out / "generation_config.json", ids)
    tokenizer.save_pretrained(out)
    return out


def from_hf(directory: str | Path, name: str = "from-hf") -> LlamaLM:
    """The labkit :class:`LlamaLM` of a transformers LLaMA directory (the inverse of
    :func:`export_hf`), in the weights' dtype, in eval mode.

    Raises:
        FileNotFoundError: no ``config.json`` or ``model.safetensors`` there.
        ValueError: maths labkit lacks (see :func:`config_from_hf`), or weights that do not
            fit the config (the differing names are listed).
    """
    d = Path(directory)
    for f in ("config.json", "model.safetensors"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"no {f} in {d}; is it a (single-file) transformers model "
                                    "directory?")
    cfg = config_from_hf(json.loads((d / "config.json").read_text()), name)
    state = {to_labkit_key(k): v for k, v in load_file(str(d / "model.safetensors")).items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # a tied head may be stored; it is embed_tokens
    model = build(cfg, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise ValueError(f"the weights in {d} do not fit its config.json: {diff[:5]} differ "
                         f"(config wants {[want.get(k) for k in diff[:5]]}, file has "
                         f"{[got.get(k) for k in diff[:5]]})")
    dtype = next(iter(state.values())).dtype
    model = build(cfg, dtype=dtype)
    model.load_state_dict(state)
    return model.eval()


def _convert_adapter(src: str | Path, dst: str | Path, rename, rename_targets: bool) -> Path:
    src, dst = Path(src), Path(dst)
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        if not (src / f).is_file():
            raise FileNotFoundError(f"no {f} in {src}; is it an adapter directory?")
    cfg = json.loads((src / CONFIG_NAME).read_text())
    if isinstance(cfg.get("target_modules"), str) and cfg["target_modules"] != "all-linear":
        raise ValueError(f"{src / CONFIG_NAME} names its targets with a regular expression "
                         f"({cfg['target_modules']!r}), which holds module paths that differ "
                         "between labkit and transformers; save the adapter with a list of "
                         "module names (e.g. ['q_proj', 'v_proj'])")
    if rename_targets and isinstance(cfg.get("target_modules"), list):
        # PEFT's "all-linear" is saved as full module paths; suffixes pass unchanged
        cfg["target_modules"] = sorted(rename(t) for t in cfg["target_modules"])
    tensors = {}
    for k, v in load_file(str(src / WEIGHTS_NAME)).items():
        if not k.startswith(PREFIX):
            raise ValueError(f"{src / WEIGHTS_NAME}: key {k!r} does not start with {PREFIX!r}; "
                             "not a PEFT-format adapter file")
        tensors[PREFIX + rename(k.removeprefix(PREFIX))] = v
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / WEIGHTS_NAME),
              metadata={"format": "pt", DIGEST_KEY: _tensors_sha256(tensors)})
    _write_json(dst / CONFIG_NAME, cfg)
    return dst


def adapter_to_labkit(src: str | Path, dst: str | Path) -> Path:
    """Copy an adapter PEFT saved on an exported model so labkit's ``load_adapter`` loads it
    into the :class:`LlamaLM`: ``base_model.model.model.layers...`` -> ``...model.layers``
    (and ``model.layers...`` -> ``layers...`` in ``target_modules``)."""
    return _convert_adapter(src, dst, to_labkit_key, rename_targets=True)


def adapter_to_hf(src: str | Path, dst: str | Path) -> Path:
    """Copy an adapter labkit saved on a :class:`LlamaLM` so ``PeftModel.from_pretrained``
    loads it into the exported transformers model (the inverse of :func:`adapter_to_labkit`;
    ``target_modules`` stay: PEFT matches a name against the end of a module path)."""
    return _convert_adapter(src, dst, to_hf_key, rename_targets=False)


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2) + "\n")
