"""Save and load LoRA adapters in PEFT's file format (safetensors + adapter_config.json).

An adapter directory holds two files::

    adapter_config.json         {"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                 "target_modules": ["q_proj", "v_proj"], ...}
    adapter_model.safetensors   base_model.model.<module path>.lora_A.weight  (r, k)
                                base_model.model.<module path>.lora_B.weight  (d, r)
                                base_model.model.<path>.lora_magnitude_vector (d,) DoRA
                                base_model.model.<path>.lora_embedding_A      (r, V)
                                base_model.model.<path>.lora_embedding_B      (D, r)

Only the adapters are stored (a few MB for a 7B model), never the frozen base. The keys
are PEFT's: a ``PeftModel`` wraps the model twice (``base_model`` -> ``model``), and the
adapter name is dropped from the key, so one file can be loaded under any name. An
adapter saved here loads with ``PeftModel.from_pretrained`` and one saved by PEFT loads
with :func:`load_adapter`; the tests check both give the same logits. The header metadata
of a file saved here records the sha256 of its tensors, which :func:`load_adapter` checks,
so a damaged or changed file is refused instead of loaded (PEFT's files, without the
record, load as they are).

Variants: ``use_dora`` and ``init_lora_weights`` are recorded as PEFT records them. A PiSSA
adapter belongs to the residual base; both libraries load it onto the *original* base by
redoing the SVD (``W - s B_0 A_0`` does not depend on the singular vectors' signs), then the
tensors. ``save_adapter(..., initial_adapter=dir)`` writes instead the rank-``2r`` adapter
for the original base (PEFT's ``path_initial_model_for_weight_conversion``). A LoftQ adapter
is saved as PEFT's LoftQ example saves it (``init_lora_weights: true``), an adapter on the
LoftQ base ``Q``, which travels apart (``prepare_qlora(..., init="loftq")`` rebuilds it).

Imports: torch, safetensors (when saving or loading), ``labkit.lora.inject``,
``labkit.lora.init``, ``labkit.lora.guard`` and ``labkit.lora.counts``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

from labkit._deps import torch  # one clear line when torch is missing

from torch import nn

from labkit.lora.counts import model_params
from labkit.lora.guard import _check_finite, _check_hparams, unchanged_on_error
from labkit.lora.init import PEFT_INIT, converted_alpha, pissa_to_lora
from labkit.lora.inject import (
    BIAS_MODES,
    LoRAConfig,
    LoRAReport,
    _configs,
    add_lora,
    get_adapter_params,
    lora_layers,
    set_adapter,
)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> your model
#: Header metadata key of the record ``save_adapter`` writes: the sha256 of all the file's
#: tensors (see ``_tensors_sha256``), base64. PEFT ignores it; ``load_adapter`` checks it when
#: it is there. One digest for the file, not one per tensor: 60 bytes, where a record per
#: tensor would add about 130 bytes a tensor (4 kB to the lessons' 73 kB adapter).
DIGEST_KEY = "labkit_sha256"

# PEFT options that change what an adapter computes; labkit implements none of them, so a
# file that uses one is refused rather than loaded wrongly.
_UNSUPPORTED = ("lora_bias", "rank_pattern", "alpha_pattern", "layers_to_transform",
                "modules_to_save", "exclude_modules", "target_parameters",
                "trainable_token_indices", "layer_replication", "use_qalora",
                "alora_invocation_tokens", "use_bdlora", "megatron_config")


def _file_key(model_key: str, adapter_name: str) -> str:
    """``a.q_proj.lora_A.default.weight`` -> ``base_model.model.a.q_proj.lora_A.weight``."""
    parts = model_key.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.startswith("lora_") and parts[i + 1] == adapter_name:
            del parts[i + 1]
            break
    return PREFIX + ".".join(parts)


def _bias_keys(model: nn.Module, cfg: LoRAConfig, adapter_name: str) -> list[str]:
    """Model keys of the biases an adapter trains (and so must carry), as in PEFT."""
    if cfg.bias == "all":
        return [n for n, _ in model.named_parameters() if n == "bias" or n.endswith(".bias")]
    if cfg.bias == "lora_only":
        return [f"{path}.base_layer.bias" for path, lay in lora_layers(model)
                if adapter_name in lay.r and getattr(lay.base_layer, "bias", None) is not None]
    return []


def adapter_state_dict(model: nn.Module,
                       adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_adapter` writes, under PEFT's keys (detached CPU copies)."""
    name = _resolve_name(model, adapter_name)
    cfg = _configs(model)[name]
    params = dict(model.named_parameters())
    keys = list(get_adapter_params(model, name)) + _bias_keys(model, cfg, name)
    # an FSDP2-sharded parameter (a DTensor) is gathered whole first: a collective
    return {_file_key(k, name): _whole(params[k]).detach().to("cpu").contiguous() for k in keys}


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _resolve_name(model: nn.Module, adapter_name: str | None) -> str:
    configs = _configs(model)
    if not configs:
        raise ValueError("the model has no adapter added by add_lora/load_adapter to save")
    if adapter_name is None:
        active = {lay.active_adapter for _, lay in lora_layers(model)} - {None}
        if len(active) != 1:
            raise ValueError(f"say which adapter: adapter_name= one of {sorted(configs)}")
        adapter_name = active.pop()
    if adapter_name not in configs:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {sorted(configs)}")
    return adapter_name


def save_adapter(model: nn.Module, directory, adapter_name: str | None = None, *,
                 base_model_name_or_path: str | None = None,
                 task_type: str | None = None, initial_adapter=None) -> Path:
    """Write one adapter as ``adapter_model.safetensors`` + ``adapter_config.json``.

    Args:
        model: a model with adapters from :func:`labkit.lora.add_lora`.
        directory: created if missing.
        adapter_name: which adapter (default: the active one).
        base_model_name_or_path: recorded in the config, as PEFT does (e.g. a hub id).
        task_type: PEFT's task type, e.g. ``"CAUSAL_LM"``; ``None`` loads as a plain
            ``PeftModel``.
        initial_adapter: for a PiSSA adapter, the directory it was saved to right after
            ``add_lora(..., init="pissa")``: then the file written is the rank-``2r`` LoRA
            adapter for the *original* base (module docstring), as PEFT writes it with
            ``path_initial_model_for_weight_conversion``.

    Under torchrun a ``DistributedDataParallel`` or FSDP2 model may be passed as it is, and
    every rank must call this: the replica inside is saved (same keys as one process would
    write; FSDP2's shards are gathered first), by rank 0 only, and every rank waits at a
    barrier until the files are there. The adapter is saved once, not W times.

    The safetensors header records the sha256 of the tensors (``DIGEST_KEY``), so that
    :func:`load_adapter` finds a damaged or changed file; PEFT ignores the record.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    name = _resolve_name(model, adapter_name)
    cfg = _configs(model)[name]
    out = Path(directory)
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    tensors = adapter_state_dict(model, name)  # on every rank: FSDP2 gathers collectively
    meta = asdict(cfg)
    if cfg.init_lora_weights == "loftq":  # as PEFT's LoftQ example saves it (docstring)
        meta.update(init_lora_weights=True, loftq_config={})
    if initial_adapter is not None:
        tensors, meta = _converted(tensors, meta, initial_adapter)
    if not distributed or dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / WEIGHTS_NAME),
                  metadata={"format": "pt", DIGEST_KEY: _tensors_sha256(tensors)})
        meta.update(base_model_name_or_path=base_model_name_or_path
                    or cfg.base_model_name_or_path,
                    task_type=task_type or cfg.task_type, inference_mode=True)
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if distributed:
        dist.barrier()
    return out


def _converted(tensors: dict, meta: dict, initial_adapter) -> tuple[dict, dict]:
    """A PiSSA adapter and its config as the rank-2r LoRA adapter of the original base."""
    if meta["init_lora_weights"] != "pissa":
        raise ValueError(f"initial_adapter= converts a PiSSA adapter for the original base; this "
                         f"adapter's init is {meta['init_lora_weights']!r}, so it already is one")
    first = read_adapter_config(initial_adapter)
    if (first.r, first.lora_alpha, first.use_rslora) != (meta["r"], meta["lora_alpha"],
                                                         meta["use_rslora"]):
        raise ValueError(f"{initial_adapter} holds an adapter with r={first.r}, alpha="
                         f"{first.lora_alpha}, not this one's initial state; pass the directory "
                         "saved right after add_lora(..., init='pissa')")
    tensors = pissa_to_lora(tensors, _read_tensors(Path(initial_adapter) / WEIGHTS_NAME))
    meta = dict(meta, r=2 * meta["r"], init_lora_weights=True,
                lora_alpha=converted_alpha(meta["lora_alpha"], meta["use_rslora"]))
    return tensors, meta


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of CPU tensors, base64: each one's name, dtype, shape and bytes (as safetensors
    stores them), in name order. A renamed, reshaped or changed tensor changes it."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return base64.b64encode(h.digest()).decode()


def read_adapter_config(directory) -> LoRAConfig:
    """Parse ``adapter_config.json`` (labkit's or PEFT's) into a :class:`LoRAConfig`.

    Raises:
        FileNotFoundError: no config file there.
        ValueError: not JSON, not a LoRA adapter, a PEFT option labkit does not implement,
            bad hyper-parameters or an invalid ``target_modules`` regex (the path is named).
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; is this an adapter directory?")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore the file or save the "
                         "adapter again") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object of adapter "
                         "settings; restore the file or save the adapter again")
    if d.get("peft_type") != "LORA":
        raise ValueError(f"{path} holds a {d.get('peft_type')!r} adapter; labkit loads LORA only")
    used = {k: d[k] for k in _UNSUPPORTED if d.get(k) not in (None, False, {}, [], "")}
    if used:
        raise ValueError(f"{path} uses PEFT options labkit does not implement: {used}; "
                         "load this adapter with PEFT instead")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if d.get(k) in (None, [], "")]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    init = d.get("init_lora_weights", True)
    if init not in (True, False) and init not in PEFT_INIT.values():
        raise ValueError(f"{path}: init_lora_weights={init!r} is a PEFT initialisation labkit "
                         f"does not implement (labkit: {sorted(map(str, PEFT_INIT.values()))}); "
                         "load this adapter with PEFT instead")
    cfg = LoRAConfig(
        r=d["r"], lora_alpha=d["lora_alpha"], target_modules=d["target_modules"],
        lora_dropout=d.get("lora_dropout", 0.0), use_rslora=d.get("use_rslora", False),
        use_dora=bool(d.get("use_dora", False)), init_lora_weights=init,
        loftq_config=d.get("loftq_config") or {},
        fan_in_fan_out=d.get("fan_in_fan_out", False),
        bias=d.get("bias", "none"), base_model_name_or_path=d.get("base_model_name_or_path"),
        task_type=d.get("task_type"))
    _check_config(cfg, path)
    return cfg


def _check_config(cfg: LoRAConfig, path: Path) -> None:
    try:
        _check_hparams(cfg.r, cfg.lora_alpha, cfg.lora_dropout)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if cfg.bias not in BIAS_MODES:
        raise ValueError(f"{path}: bias must be one of {BIAS_MODES}, got {cfg.bias!r}")
    t = cfg.target_modules
    if isinstance(t, str):  # PEFT's regex form, matched against full module names
        try:
            re.compile(t)
        except re.error as exc:
            raise ValueError(f"{path}: target_modules {t!r} is not a valid regular expression "
                             f"({exc}); fix the pattern, or list the module names") from None
    elif not isinstance(t, list) or not all(isinstance(x, str) and x for x in t):
        raise ValueError(f"{path}: target_modules must be a list of module names or a regex "
                         f"string, got {t!r}")


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter file, checked against the sha256 record (when there is one)
    and for NaN / inf; every error names the file and the tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error type, OSError, ...
        raise ValueError(f"{weights} is not a readable safetensors file ({exc}); restore it or "
                         "save the adapter again") from None
    damaged = ("the file is damaged or was changed after it was saved; restore it or save "
               "the adapter again")
    # files labkit saved carry the record; PEFT's have none and load unchecked
    if DIGEST_KEY in meta and meta[DIGEST_KEY] != _tensors_sha256(tensors):
        raise ValueError(f"{weights}: its tensors ({len(tensors)}: names, shapes and bytes) do "
                         f"not match the sha256 recorded when it was saved ({DIGEST_KEY} in "
                         f"its header); {damaged}")
    for k, t in tensors.items():
        if t.is_floating_point():
            _check_finite(t, f"{weights}: tensor {k!r}", "loading it would make every output "
                          "NaN; the adapter diverged in training (train it again, e.g. with a "
                          "lower learning rate) or the file is damaged")
    return tensors


def load_adapter(model: nn.Module, directory, adapter_name: str = "default", *,
                 is_trainable: bool = False) -> LoRAReport:
    """Load an adapter directory (saved here or by PEFT) into ``model``.

    If ``model`` has no adapter called ``adapter_name`` yet, it is injected from the
    config first (same targets, ``r``, ``alpha``); if it has one, the config must agree
    with it. Every tensor's shape is checked against the model.

    Args:
        model: the base model the adapter was trained on (or that model with LoRA added).
        directory: the adapter directory.
        adapter_name: the name it gets here.
        is_trainable: keep training it (``True``) or freeze it for inference (default,
            as in PEFT's ``from_pretrained``).

    Returns:
        A :class:`LoRAReport` of the loaded adapter.

    Raises:
        ValueError: targets that match nothing in the model, tensors whose shapes do not fit
            it, missing or unexpected tensors, or a config that disagrees with an adapter of
            the same name already in the model; a config that is not JSON, a tensor that does
            not match the file's sha256 record, or holds NaN / inf. Every check runs before
            the model changes, or the model is restored: after an error it is as it was.
    """
    cfg = read_adapter_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    tensors = _read_tensors(weights)
    with unchanged_on_error(model):  # e.g. shapes that do not fit: the injection is undone
        return _load_into(model, directory, cfg, tensors, adapter_name, is_trainable)


def _load_into(model: nn.Module, directory, cfg: LoRAConfig, tensors: dict,
               adapter_name: str, is_trainable: bool) -> LoRAReport:
    existing = _configs(model).get(adapter_name)
    if existing is None:
        targets = cfg.target_modules
        if isinstance(targets, str):  # PEFT's regex form: must match the full module name
            targets = re.compile(targets)
        if cfg.init_lora_weights == "loftq":
            raise ValueError(f"{directory} holds a LoftQ adapter: it needs the LoftQ base. Build "
                             "it first with labkit.qlora.prepare_qlora(model, targets, "
                             "init='loftq', ...) (same r, alpha), then load_adapter")
        # PiSSA: the SVD is redone on the original base (its residual), then the tensors load
        init = "pissa" if cfg.init_lora_weights == "pissa" else "default"
        report = add_lora(model, targets, r=cfg.r, alpha=cfg.lora_alpha,
                          dropout=cfg.lora_dropout, use_rslora=cfg.use_rslora,
                          use_dora=cfg.use_dora, init=init, bias=cfg.bias,
                          adapter_name=adapter_name)
    else:
        differ = {k: (getattr(existing, k), getattr(cfg, k))
                  for k in ("r", "lora_alpha", "use_rslora", "use_dora")
                  if getattr(existing, k) != getattr(cfg, k)}
        if differ:
            raise ValueError(f"adapter {adapter_name!r} in the model and the file in {directory} "
                             f"disagree (model, file): {differ}; load it under another name")
        set_adapter(model, adapter_name)
        report = None
    stored = _configs(model)[adapter_name]
    if stored.fan_in_fan_out != cfg.fan_in_fan_out:
        raise ValueError(f"{directory} says fan_in_fan_out={cfg.fan_in_fan_out}, but the layers "
                         f"it targets here are {'not ' if cfg.fan_in_fan_out else ''}GPT-2 "
                         "Conv1D layers; was it trained on a different base model?")
    state = dict(model.state_dict(keep_vars=True))
    wanted = {_file_key(k, adapter_name): k for k in get_adapter_params(model, adapter_name)}
    lacking = sorted(set(wanted) - set(tensors))
    if lacking:
        raise ValueError(f"the adapter in {directory} has no tensors for {len(lacking)} layers "
                         f"the model targets, e.g. {lacking[:3]}; was it trained on other "
                         "target layers?")
    for fkey in tensors:  # biases and (for embeddings) base tables PEFT may have saved
        if fkey not in wanted and fkey.removeprefix(PREFIX) in state:
            wanted[fkey] = fkey.removeprefix(PREFIX)
    extra = sorted(set(tensors) - set(wanted))
    if extra:
        raise ValueError(f"the adapter in {directory} has tensors for modules this model lacks "
                         f"(or that its adapter {adapter_name!r} does not cover), e.g. "
                         f"{extra[:3]}; was it trained on a different base model?")
    bad = [f"{f}: file {tuple(tensors[f].shape)}, model {tuple(state[k].shape)}"
           for f, k in wanted.items() if tensors[f].shape != state[k].shape]
    if bad:
        raise ValueError(f"adapter shapes do not fit the model (config r={cfg.r}): {bad[:3]}; "
                         "was it trained on a different base model or rank?")
    with torch.no_grad():
        for f, k in wanted.items():
            state[k].copy_(tensors[f].to(state[k].dtype))
    stored.base_model_name_or_path = cfg.base_model_name_or_path
    stored.task_type = cfg.task_type
    if not is_trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    if report is None:
        report = LoRAReport(adapter_name, stored, [n for n, lay in lora_layers(model)
                                                   if adapter_name in lay.r], model_params(model))
    else:
        report.params = model_params(model)
    return report
