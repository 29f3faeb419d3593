"""The standard stack: the LoRA fine-tune a practitioner writes with transformers + PEFT.

Every step is the library call you will type on a real model; labkit adds nothing but the
data. Lesson 10 runs the steps cell by cell; :func:`train_with_peft` runs them in a row::

    model, tokenizer = load(model_dir)                  # AutoModelForCausalLM, AutoTokenizer
    model = add_lora(model, r=8, alpha=16)              # LoraConfig("all-linear"), get_peft_model
    losses = train_steps(model, tokenizer, chats, ...)  # model(**batch).loss, AdamW
    model.save_pretrained(adapter_dir)                  # adapter_config.json + safetensors
    model = reload(model_dir, adapter_dir)              # PeftModel.from_pretrained
    merged = model.merge_and_unload()                   # W + (alpha / r) B A, adapters gone

Nothing here knows the course model: ``model_dir`` may be any causal LM directory, or a hub
id on a machine that may download. The data are *conversations*, lists of chat messages
(``{"role": "user", "content": ...}``), which :func:`chat_batch` renders with the
tokenizer's own chat template; the loss is on the assistant's reply only (labels -100 on
the prompt, as in TRL's ``assistant_only_loss``). A test runs this code on two exported
models of different shapes and tokenizers.

Imports: torch, transformers and peft (through :mod:`labkit._deps`), :mod:`labkit.chat`,
:mod:`labkit.data`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from labkit import _deps

# isort: split
import torch

from labkit.chat import ChatTask
from labkit.data import IGNORE_INDEX  # -100: labels that add nothing to the loss


def load(model_dir: str | Path, *, four_bit: bool = False, dtype: torch.dtype = torch.float32,
         attn_implementation: str = "eager", progress: bool = False):
    """``AutoModelForCausalLM`` and ``AutoTokenizer`` from one directory (or hub id).

    Args:
        four_bit: load the linear layers in 4-bit NF4 with double quantization
            (``BitsAndBytesConfig``; needs bitsandbytes); ``dtype`` is then the compute dtype.
        dtype: the weights' dtype (``torch.bfloat16`` on a GPU).
        attn_implementation: ``"eager"`` is attention written out, the same maths as
            labkit's; ``"sdpa"`` is PyTorch's fused kernel, faster on a GPU.
        progress: show transformers' "Loading weights" bar (off: lessons store their stderr).
    """
    transformers, _ = _deps.import_hf()
    quantization = None
    if four_bit:
        _deps.import_bnb()
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    with _deps.hf_progress_bars(progress):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, quantization_config=quantization,
            attn_implementation=attn_implementation)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def add_lora(model, r: int = 8, alpha: float = 16, dropout: float = 0.0):
    """Wrap ``model`` in a ``PeftModel`` with LoRA on every linear layer but the output head.

    A 4-bit model is first prepared with ``prepare_model_for_kbit_training`` (norms and
    head in fp32, gradients into the input embeddings; gradient checkpointing stays off, it
    only saves memory on long sequences).
    """
    _, peft = _deps.import_hf()
    if getattr(model, "is_loaded_in_4bit", False):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def chat_batch(tokenizer, chats: list[list[dict]]) -> dict[str, torch.Tensor]:
    """Conversations ending with the assistant's reply -> ``input_ids``, ``labels``,
    ``attention_mask`` (right-padded), the loss on the reply only.

    The prompt is the conversation without its last message, rendered with the generation
    prompt (``add_generation_prompt=True``); the reply's tokens are what the full
    conversation adds after it.

    Raises:
        ValueError: a template whose full rendering does not start with the prompt's (the
            reply's tokens cannot be told apart), or a sequence longer than the model takes.
    """
    rows = []
    for chat in chats:
        prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(chat, return_dict=False)
        if full[:len(prompt)] != prompt:
            raise ValueError("the chat template renders the conversation so that it does not "
                             "start with its prompt; mask the labels another way (e.g. "
                             "return_assistant_tokens_mask=True with a template that marks "
                             "{% generation %})")
        if len(full) > tokenizer.model_max_length:
            raise ValueError(f"a conversation takes {len(full)} tokens, more than the model's "
                             f"{tokenizer.model_max_length}; shorten it")
        rows.append((full, [IGNORE_INDEX] * len(prompt) + full[len(prompt):]))
    T = max(len(full) for full, _ in rows)
    pad = tokenizer.pad_token_id

    def padded(seq, fill):
        return seq + [fill] * (T - len(seq))

    return {"input_ids": torch.tensor([padded(f, pad) for f, _ in rows]),
            "labels": torch.tensor([padded(lab, IGNORE_INDEX) for _, lab in rows]),
            "attention_mask": torch.tensor([padded([1] * len(f), 0) for f, _ in rows])}


def train_steps(model, tokenizer, chats: list[list[dict]], steps: int, lr: float = 3e-3,
                batch_size: int = 16) -> list[float]:
    """A plain training loop: AdamW on the trainable (LoRA) parameters, one batch of
    ``batch_size`` conversations per step, taken from ``chats`` in order (cycling).

    Returns:
        The loss of every step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; call add_lora first")
    opt = torch.optim.AdamW(params, lr=lr)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for step in range(steps):
        chunk = [chats[(step * batch_size + i) % len(chats)] for i in range(batch_size)]
        batch = {k: v.to(device) for k, v in chat_batch(tokenizer, chunk).items()}
        loss = model(**batch).loss  # transformers shifts the labels by one inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def reload(model_dir: str | Path, adapter_dir: str | Path, **load_kwargs):
    """The base model loaded afresh with the saved adapter: ``PeftModel.from_pretrained``."""
    _, peft = _deps.import_hf()
    base, _ = load(model_dir, **load_kwargs)
    return peft.PeftModel.from_pretrained(base, adapter_dir).eval()


@dataclass
class PeftRun:
    """What :func:`train_with_peft` did: the loss per step, where the adapter is, the
    trained ``PeftModel``, the model reloaded from disk, and that model merged."""

    losses: list[float]
    adapter_dir: Path
    model: object
    reloaded: object
    merged: object
    tokenizer: object


def train_with_peft(model_dir: str | Path, task: ChatTask, adapter_dir: str | Path,
                    steps: int = 30, *, r: int = 8, alpha: float = 16, lr: float = 3e-3,
                    batch_size: int = 16, seed: int = 0) -> PeftRun:
    """The whole standard path on ``task``'s training conversations, seeded.

    ``merged`` is a copy of ``reloaded`` with the adapter folded into the weights
    (``merge_and_unload``), so the two can be compared.
    """
    torch.manual_seed(seed)  # the LoRA A matrices start random
    model, tokenizer = load(model_dir)
    model = add_lora(model, r=r, alpha=alpha)
    chats = [task.messages(p, a) for p, a in task.sample(steps * batch_size, seed, "train")]
    losses = train_steps(model, tokenizer, chats, steps, lr=lr, batch_size=batch_size)
    model.save_pretrained(adapter_dir)
    reloaded = reload(model_dir, adapter_dir)
    merged = copy.deepcopy(reloaded).merge_and_unload()
    return PeftRun(losses, Path(adapter_dir), model, reloaded, merged, tokenizer)
