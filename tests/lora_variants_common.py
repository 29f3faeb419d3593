"""What the tests of the LoRA variants against PEFT share (tests/test_lora_variants_*.py).

The same model on both sides: PEFT's ``get_peft_model`` wraps a deep copy of the course's
shipped model (labkit's ``LlamaLM``, any ``nn.Module`` works for PEFT; its module paths are
the ones labkit's adapter files use), so adapter files move without renaming. Both sides
train with the same loop, :func:`labkit.train.train` (same batches, same seed, AdamW), and
are compared on the logits of fixed ids.

Tolerance (float32 on the CPU): the two libraries compute the same maths in a different
order of operations, so after init outputs agree to ~1e-6; after a few AdamW steps at
``lr = 1e-2`` differences of that size are carried along but not amplified (Adam's update
is bounded by ``lr``), so we allow ``atol = 1e-4, rtol = 1e-4`` on logits of size ~10,
while every variant moves the logits by more than 1e-2 (checked in each test), so a wrong
scaling, key or sign fails by orders of magnitude.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from labkit import _deps, train  # noqa: E402
from labkit.pretrained import load_pretrained  # noqa: E402

_deps.import_bnb()  # peft imports bitsandbytes; import it quietly first

IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 11, 40], [4, 4, 8, 64, 100, 6, 63, 90]])
TOL = dict(atol=1e-4, rtol=1e-4)  # after training (see the module docstring)
INIT_TOL = dict(atol=1e-5, rtol=1e-5)  # right after init
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
PEFT_PREFIX = "base_model.model."

# Library chatter, not ours.
FILTERS = ["ignore:`is_gradient_checkpointing`:FutureWarning",
           "ignore:Setting `save_embedding_layers`:UserWarning",
           "ignore:fan_in_fan_out is set to False:UserWarning"]


def course_model():
    """The shipped pretrained model (2 blocks, hidden 128), float32, eval mode."""
    return load_pretrained().model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return out if isinstance(out, torch.Tensor) else out.logits


def run(model, steps: int = 3, lr: float = 1e-2, optimizer="adamw", **kw):
    """A few steps of labkit's loop (either library's model), fixed seed, no progress bar."""
    return train.train(model, "shift", steps=steps, lr=lr, batch_size=8, eval_n=4, seed=0,
                       progress=False, optimizer=optimizer, **kw)


def peft_name(labkit_name: str) -> str:
    """``layers.0.q_proj.lora_A.default.weight`` -> PEFT's parameter name (DoRA's magnitude
    is a ``.weight`` of a module in PEFT, a plain parameter here)."""
    name = PEFT_PREFIX + labkit_name
    return name + ".weight" if name.endswith("lora_magnitude_vector.default") else name


def copy_adapters(mine, pm) -> None:
    """Give PEFT's model the values of labkit's adapter tensors (same init on both sides)."""
    with torch.no_grad():
        for n, p in mine.named_parameters():
            if ".lora_" in n:
                pm.get_parameter(peft_name(n)).copy_(p)


def adapter_products(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{layer path: s * B @ A}`` for labkit and PEFT models alike (signs of A and B alone
    are not defined for SVD-based inits)."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            ba = mod.lora_B["default"].weight @ mod.lora_A["default"].weight
            out[name.removeprefix(prefix)] = mod.scaling["default"] * ba.detach()
    return out


def deepcopy(model):
    return copy.deepcopy(model)
