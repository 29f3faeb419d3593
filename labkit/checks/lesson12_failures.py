"""Lesson 12's exercises on training and saving: gradients through checkpointing, adapter files.

Three fixes a learner writes after the lesson reproduced the problem:

* :func:`check_inputs_require_grad`: the body of transformers' ``enable_input_require_grads``
  hook, ``f(embedding_output) -> tensor``. The check feeds its answer into a block that runs
  under ``torch.utils.checkpoint(..., use_reentrant=True)`` with a frozen embedding in front,
  and compares the LoRA gradients with those of the same block without checkpointing.
* :func:`check_adapter_state_dict`: what ``save_pretrained`` must write,
  ``f(state_dict, adapter_name) -> dict``, PEFT's rule (only the named adapter's ``lora_A`` /
  ``lora_B``, the adapter name taken out of each key). It names the empty dict of the
  "443-byte adapter" reports, the frozen base weights, keys that keep the adapter name.
* :func:`check_head_config`: the ``LoraConfig`` keyword arguments for a sequence classifier,
  ``f(head_name) -> dict``. The check builds a small ``LlamaForSequenceClassification`` with
  PEFT, takes one optimizer step, saves the adapter, loads it onto a base whose new head
  got other random weights, and compares the predictions.

Imports: ``labkit.checks.harness``; torch on first use; transformers and PEFT inside
:func:`check_head_config` (through ``labkit._deps.import_hf``).
"""

from __future__ import annotations

import random
import tempfile
import warnings
from collections.abc import Callable

from labkit.checks import harness as H

torch = None  # imported on first use by H._need_torch(globals())

# ------------------------------------------------------------------ checkpointing, frozen input

_REENTRANT_ERROR = "element 0 of tensors does not require grad and does not have a grad_fn"


def check_inputs_require_grad(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(embedding_output) -> tensor``, the hook that lets gradients through.

    A frozen embedding returns a tensor that does not require grad. Under
    ``torch.utils.checkpoint(block, x, use_reentrant=True)`` the block's output then does
    not require grad either (the reentrant function only tracks its tensor inputs), and
    ``backward`` raises "element 0 of tensors does not require grad and does not have a
    grad_fn", although the LoRA factors inside the block do require it. The fix is
    transformers' ``enable_input_require_grads``: a forward hook on the embedding that
    returns its output with ``requires_grad_(True)``.

    Checked: the answer is a tensor of the same values that requires grad, and, run through
    a reentrant-checkpointed LoRA block, gives A and B the gradients they get without
    checkpointing. Named: returning None (a hook may work in place, this function must
    return), a bool (``.requires_grad`` without the underscore), a tensor that still needs
    no gradient (unchanged, ``.detach()``, ``torch.no_grad()``), changed values.
    """
    name = "inputs_require_grad"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    from torch.utils.checkpoint import checkpoint

    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(16, 8, generator=gen)  # the frozen embedding's weight
    W = torch.randn(8, 8, generator=gen) / 3
    A = (torch.randn(2, 8, generator=gen) / 3).requires_grad_(True)
    B = (torch.randn(8, 2, generator=gen) / 3).requires_grad_(True)
    hidden = table[torch.randint(0, 16, (2, 5), generator=gen)]  # no grad, like the real one

    def block(h):  # a frozen linear layer with a LoRA update, scale 2
        return torch.tanh(h @ W.T + 2.0 * (h @ A.T) @ B.T)

    want = torch.autograd.grad(block(hidden).square().mean(), (A, B))
    try:
        out = H._call(fn, hidden.clone())
    except H._LearnerError as exc:
        return H._report(name, False, f"your function raised {exc}")
    if out is None:
        return H._report(name, False, "your function returned None: a forward hook may change "
                         "the output in place and return nothing, but here return the tensor "
                         "(e.g. `return output.requires_grad_(True)`)")
    if isinstance(out, bool):
        return H._report(name, False, "you returned a bool: `.requires_grad` only reads the "
                         "flag; `.requires_grad_(True)`, with the underscore, sets it and "
                         "returns the tensor")
    if not isinstance(out, torch.Tensor):
        return H._report(name, False, f"return the embedding output tensor; got "
                         f"{type(out).__name__}")
    if out.shape != hidden.shape or not torch.allclose(out.detach().float(), hidden, atol=1e-6):
        return H._report(name, False, "the values changed: the hook must pass the embedding "
                         "output on unchanged and only switch on its requires_grad")
    if not out.requires_grad:
        return H._report(name, False, "the tensor you return still does not require grad, so "
                         "checkpoint(..., use_reentrant=True) sees no input that needs a "
                         f"gradient and backward fails with '{_REENTRANT_ERROR}'; call "
                         ".requires_grad_(True) on it and return it (.detach() and "
                         "torch.no_grad() give a tensor without gradient)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's "None of the inputs have requires_grad"
        y = checkpoint(block, out, use_reentrant=True)
    try:  # backward, not autograd.grad: the reentrant checkpoint supports only backward
        y.square().mean().backward()
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return H._report(name, False, f"backward through the checkpointed block failed: {first}")
    got = (A.grad, B.grad)
    for what, g, w in zip(("A", "B"), got, want, strict=True):
        if g is None or not torch.allclose(g, w, rtol=1e-5, atol=1e-7):
            return H._report(name, False, f"the gradient of the LoRA factor {what} differs from "
                             "the one without checkpointing; return the embedding output "
                             "itself with requires_grad_(True)")
    return H._report(name, True, "under checkpoint(..., use_reentrant=True) after a frozen "
                     "embedding, the LoRA factors get the same gradients as without "
                     "checkpointing")


# ------------------------------------------------------------------ what an adapter file holds


def _peft_state_dict(rng: random.Random, gen, names: list[str]) -> dict:
    """A PeftModel's state_dict: a frozen base and the adapters ``names`` (random ranks)."""
    prefix = "base_model.model.model"
    sd = {f"{prefix}.embed_tokens.weight": torch.randn(32, 8, generator=gen),
          "base_model.model.lm_head.weight": torch.randn(32, 8, generator=gen)}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            mod = f"{prefix}.layers.{layer}.self_attn.{proj}"
            sd[f"{mod}.base_layer.weight"] = torch.randn(8, 8, generator=gen)
            for adapter in names:
                r = rng.choice([2, 4])
                sd[f"{mod}.lora_A.{adapter}.weight"] = torch.randn(r, 8, generator=gen)
                sd[f"{mod}.lora_B.{adapter}.weight"] = torch.randn(8, r, generator=gen)
        sd[f"{prefix}.layers.{layer}.input_layernorm.weight"] = torch.ones(8)
    return sd


def _reference_adapter(sd: dict, adapter: str) -> dict:
    tag = f".{adapter}."
    return {k.replace(tag, "."): v for k, v in sd.items() if "lora_" in k and tag in k}


def check_adapter_state_dict(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(state_dict, adapter_name) -> dict``, the tensors ``save_pretrained`` writes.

    ``state_dict`` is a PeftModel's ``state_dict()``: the frozen base weights
    (``...q_proj.base_layer.weight``) and, for each adapter, ``...q_proj.lora_A.<name>.weight``
    and ``lora_B``. PEFT's file holds only the named adapter's ``lora_A`` / ``lora_B``, under
    keys without the adapter name (``...q_proj.lora_A.weight``), which is what
    ``PeftModel.from_pretrained`` looks for.

    Named: an empty dict (the 443-byte ``adapter_model.bin`` of 2023: a filter that wants the
    adapter name in keys that no longer hold it keeps nothing), frozen base tensors in the
    file, keys that keep the adapter name, another adapter's tensors, a missing factor,
    changed values.
    """
    name = "adapter_state_dict"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    names = ["default", rng.choice(["task_b", "chat", "second"])]
    sd = _peft_state_dict(rng, gen, names)
    for adapter, other in (names, names[::-1]):
        want = _reference_adapter(sd, adapter)
        try:
            got = H._call(fn, dict(sd), adapter)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} (adapter {adapter!r})")
        if got is None:
            return H._report(name, False, H._RETURNED_NONE)
        if not isinstance(got, dict):
            return H._report(name, False, f"return a dict of key -> tensor; got "
                             f"{type(got).__name__}")
        where = f"(adapter {adapter!r} of a model with adapters {names[0]!r} and {names[1]!r})"
        if not got:
            return H._report(name, False, f"your dict is empty, the nearly empty adapter file: "
                             f"here the keys still hold the adapter name "
                             f"('...lora_A.{adapter}.weight'); keep the keys with 'lora_' and "
                             f"'.{adapter}.', then remove '.{adapter}' from them {where}")
        keys = set(got)
        base = [k for k in keys if "lora_" not in k]
        if base:
            mb = sum(sd[k].numel() * 4 for k in base if k in sd) / 1e3
            return H._report(name, False, f"{len(base)} frozen base tensors are in it (e.g. "
                             f"{sorted(base)[0]!r}, {mb:.1f} kB here, gigabytes on a real "
                             f"model): an adapter file holds only lora_A and lora_B {where}")
        if any(f".{other}." in k for k in keys):
            return H._report(name, False, f"it also holds adapter {other!r}'s tensors: keep only "
                             f"the keys with '.{adapter}.' {where}")
        if any(f".{adapter}." in k for k in keys):
            return H._report(name, False, f"the keys keep the adapter name ('.{adapter}.'): "
                             "PEFT's files store '...lora_A.weight', so PeftModel.from_pretrained "
                             "would find none of them and leave the adapter at its initial "
                             f"values; remove '.{adapter}' from each key {where}")
        missing = sorted(set(want) - keys)
        if missing:
            return H._report(name, False, f"{len(missing)} of the adapter's {len(want)} tensors "
                             f"are missing, e.g. {missing[0]!r}: save lora_A and lora_B of every "
                             f"adapted layer {where}")
        extra = sorted(keys - set(want))
        if extra:
            return H._report(name, False, f"unexpected keys, e.g. {extra[0]!r}: expected "
                             f"{sorted(want)[0]!r} and the like {where}")
        for k, v in want.items():
            g = got[k]
            if not isinstance(g, torch.Tensor) or g.shape != v.shape or not torch.equal(g, v):
                return H._report(name, False, f"the tensor under {k!r} is not the model's: "
                                 f"save the state_dict's tensors unchanged {where}")
    return H._report(name, True, "only the named adapter's lora_A / lora_B, under PEFT's keys, "
                     "for each of two adapters")


# ------------------------------------------------------------------ a new classification head


def _tiny_classifier(seed: int, head_seed: int | None = None, head: str = "score"):
    """A 2-layer LlamaForSequenceClassification with 3 labels, its body drawn from ``seed``;
    the new head (``score``, as in LLaMA, or renamed to ``head``, e.g. BERT's ``classifier``)
    is random, drawn again from ``head_seed`` when one is given."""
    from labkit._deps import import_hf  # transformers and PEFT, their import noise filtered

    transformers, _ = import_hf()
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=16,
                                   num_labels=3, pad_token_id=0)
    torch.manual_seed(seed)
    cls = transformers.LlamaForSequenceClassification if head == "score" else _renamed_head(head)
    model = cls(cfg).eval()
    if head_seed is not None:  # the same base model, another new head
        with torch.no_grad():
            gen = torch.Generator().manual_seed(head_seed)
            getattr(model, head).weight.normal_(0.0, 0.02, generator=gen)
    return model


def _renamed_head(head: str):
    """LlamaForSequenceClassification whose head module is registered as ``head``: its
    forward still reads ``self.score``, which a property maps to the renamed module (or to
    the wrapper PEFT puts in its place)."""
    from labkit._deps import import_hf

    transformers, _ = import_hf()
    base = transformers.LlamaForSequenceClassification

    def __init__(self, config):
        base.__init__(self, config)
        self.add_module(head, self._modules.pop("score"))

    return type(f"LlamaWith_{head}", (base,), {
        "__init__": __init__, "score": property(lambda self: getattr(self, head))})


def check_head_config(fn: Callable, seed: int = 0) -> H.CheckResult:
    """Check ``fn(head_name) -> dict``, ``LoraConfig`` keyword arguments for a classifier.

    ``AutoModelForSequenceClassification`` puts a NEW, randomly initialised head on the base
    model (``score`` in LLaMA-style models, ``classifier`` in BERT-style ones). ``get_peft_model``
    freezes everything but the adapters, so unless the config says otherwise the head stays
    random, and ``save_pretrained`` does not save it: a reloaded model gets another random
    head. ``task_type="SEQ_CLS"`` (PEFT then adds ``classifier`` and ``score`` to
    ``modules_to_save``) or ``modules_to_save=[head_name]`` trains the head fully and saves it.

    The check builds a small LLaMA classifier with PEFT from ``LoraConfig(**fn(head))``, once
    with its head called ``score`` and once with it renamed ``classifier`` (so an answer that
    ignores ``head_name`` fails), takes one SGD step on the trainable parameters, saves the
    adapter, loads it onto a fresh base whose head got other random weights, and compares the
    logits. Named: no dict, arguments LoraConfig refuses, no LoRA layer in the body, a frozen
    head (a head name hard-coded included), LoRA on the head (its random base weight is not
    saved), a reload that does not reproduce the predictions.
    """
    name = "head_config"
    if (bad := H._not_callable(name, fn)) is not None:
        return bad
    H._need_torch(globals())
    from labkit._deps import import_hf

    _, peft = import_hf()
    for head in ("score", "classifier"):  # LLaMA's name, then BERT's
        try:
            kwargs = H._call(fn, head)
        except H._LearnerError as exc:
            return H._report(name, False, f"your function raised {exc} "
                             f"(head_name={head!r})")
        if kwargs is None:
            return H._report(name, False, H._RETURNED_NONE)
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            return H._report(name, False, "return a dict of LoraConfig keyword arguments, e.g. "
                             f"{{'r': 8, 'target_modules': [...]}}; got {type(kwargs).__name__}")
        try:
            config = peft.LoraConfig(**kwargs)
        except Exception as exc:  # the learner's arguments
            first = (str(exc).strip().splitlines() or [""])[0]
            return H._report(name, False, f"LoraConfig(**your dict) raised {type(exc).__name__}: "
                             f"{first}")
        ids = torch.randint(1, 64, (4, 8), generator=torch.Generator().manual_seed(seed))
        labels = torch.tensor([0, 1, 2, 1])
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            try:
                model = peft.get_peft_model(_tiny_classifier(seed, head=head), config)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                return H._report(name, False, f"get_peft_model refused your config: "
                                 f"{type(exc).__name__}: {first}")
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            body = [n for n in trainable if "lora_" in n and f".{head}." not in n]
            head_full = [n for n in trainable if f".{head}." in n and "lora_" not in n]
            head_lora = [n for n in trainable if f".{head}." in n and "lora_" in n]
            if not body:
                return H._report(name, False, "no LoRA layer in the model's body trains: "
                                 "keep target_modules on the attention or MLP layers (e.g. "
                                 "'all-linear')")
            if not head_full:
                if head_lora:
                    return H._report(name, False, f"LoRA on the head {head!r}: only its adapter "
                                     "trains, and the head's own weight, random since the model "
                                     "was built, is not saved, so a reloaded model gets another "
                                     f"random head; train and save it whole with "
                                     f"modules_to_save=[{head!r}] (or task_type='SEQ_CLS')")
                return H._report(name, False, f"the new head {head!r} does not train (it stays "
                                 "random) and save_pretrained will not save it: add "
                                 f"task_type='SEQ_CLS', or modules_to_save=[{head!r}]")
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.5)
            torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                trained = model(input_ids=ids).logits
            model.save_pretrained(tmp)
            fresh = _tiny_classifier(seed, seed + 1, head)
            reloaded = peft.PeftModel.from_pretrained(fresh, tmp).eval()
            with torch.no_grad():
                gap = (reloaded(input_ids=ids).logits - trained).abs().max().item()
        if gap > 1e-5:
            return H._report(name, False, f"the reloaded model's logits differ from the trained "
                             f"model's by up to {gap:.3g}: something trained is not in the adapter "
                             f"file; save the head with modules_to_save=[{head!r}]")
    return H._report(name, True, "the head ('score', then 'classifier') trains in full, is "
                     "saved with the adapter, and a reloaded model (another random head "
                     "underneath) predicts the same logits")
