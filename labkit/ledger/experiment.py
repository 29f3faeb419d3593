"""One run of the ledger's experiments: the design, and the three things it measures.

:class:`Design` fixes everything a ledger row depends on (task, targets, learning rate,
batch, budget, seeds, evaluation samples, thread count). The ledger's own design is
:data:`FULL`; :data:`QUICK` is the same code at a size the tests can afford. A run is:

* :func:`fixed_budget`: a copy of the course's pretrained model gets adapters (LoRA, DoRA,
  rsLoRA, or a 4-bit base with QLoRA's zero init, QPiSSA or LoftQ), trains ``steps`` AdamW
  steps of ``batch`` examples on ``task``, and reports the held-out loss (mean
  cross-entropy over the answer tokens of ``heldout_n`` examples drawn with their own seed)
  and exact match (greedy generation, ``em_n`` examples of another seed);
* :func:`steps_to_target`: the same, evaluated every ``eval_every`` steps, stopping at the
  first evaluation that reaches ``target`` exact match; a run that never reaches it within
  ``cap`` steps reports ``cap`` and ``reached=False``;
* :func:`step0_errors`: no training: each target layer's relative error at step 0,
  ``||W - (Q + s B A)||_F / ||W||_F``, for a 4-bit base prepared by
  :func:`labkit.qlora.prepare_qlora` with a given ``init`` (zero init: ``B A = 0``).

Pairing: both arms of a comparison call :func:`labkit.env.seed_everything` with the same
seed before the adapters are made, and train on the same batch stream (``train``'s
``seed``), so seed ``i`` of one arm is paired with seed ``i`` of the other.

Runs are cached in the process by their settings, so a run two rows share (e.g. plain LoRA
at r = 8, alpha = 16, in the DoRA and the rsLoRA rows) is trained once.

Imports: torch, :mod:`labkit.lora`, :mod:`labkit.qlora`, :mod:`labkit.train`,
:mod:`labkit.pretrained`, :mod:`labkit.data`, :mod:`labkit.env`.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, replace

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch

from labkit import lora, qlora, train
from labkit.data import get_task
from labkit.env import seed_everything
from labkit.pretrained import load_pretrained

#: Every linear layer of a block (q, k, v, o and the three MLP projections).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Design:
    """What every ledger run shares; fixed before the ledger ran (see :mod:`labkit.ledger`).

    Attributes:
        task: the fine-tune task (one of ``labkit.data.FINETUNE_TASKS``).
        targets: the adapted layers.
        lr: AdamW's learning rate (LoRA+'s ``A``; ``B`` gets ``ratio * lr``).
        batch: examples per step.
        steps: the fixed budget of DoRA, rsLoRA and the 4-bit rows.
        seeds: the paired units of the training rows.
        heldout_seed, heldout_n: the held-out loss's examples.
        em_seed, em_n: the exact-match examples after a fixed budget.
        cap, eval_every, eval_n, target: LoRA+'s steps to ``target`` exact match (evaluated
            every ``eval_every`` steps on ``eval_n`` examples of ``train``'s evaluation
            seed; at most ``cap`` steps).
        threads: torch's intra-op threads (1: deterministic, and it leaves a core free).
        backend: the 4-bit layer of the QLoRA rows: labkit's pure-PyTorch one (the same NF4
            codes as bitsandbytes' CPU path, bit for bit; no bitsandbytes import, so the
            numbers do not depend on its version).
    """

    task: str = "shift"
    targets: tuple[str, ...] = ALL_LINEAR
    lr: float = 3e-3
    batch: int = 32
    steps: int = 100
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    heldout_seed: int = 30_000
    heldout_n: int = 256
    em_seed: int = 20_000
    em_n: int = 100
    cap: int = 200
    eval_every: int = 10
    eval_n: int = 50
    target: float = 0.9
    threads: int = 1
    backend: str = "labkit"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"], d["seeds"] = list(self.targets), list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Design:
        d = dict(d)
        d["targets"], d["seeds"] = tuple(d["targets"]), tuple(d["seeds"])
        return cls(**d)


#: The ledger's design (module docstring of :mod:`labkit.ledger`).
FULL = Design()
#: The quick rows' design: the same code, 2 seeds and a few steps (a reproducibility check,
#: not evidence).
QUICK = replace(FULL, steps=5, seeds=(0, 1), heldout_n=64, em_n=10, cap=20, eval_every=10,
                eval_n=10)


@functools.lru_cache(maxsize=1)
def base_model() -> torch.nn.Module:
    """The course's pretrained model (``tiny-reverse``), loaded once; runs train copies."""
    return load_pretrained().model


def _adapt(model: torch.nn.Module, d: Design, arm: dict) -> None:
    """Give ``model`` the adapters of ``arm`` (keys: kind, r, alpha, and optionally
    use_dora, use_rslora, init, loftq_iter)."""
    kw = {"r": arm["r"], "alpha": arm["alpha"], "use_rslora": arm.get("use_rslora", False),
          "use_dora": arm.get("use_dora", False), "init": arm.get("init", "default")}
    if arm["kind"] == "lora":
        lora.add_lora(model, list(d.targets), **kw)
    elif arm["kind"] == "qlora":
        qlora.prepare_qlora(model, list(d.targets), loftq_iter=arm.get("loftq_iter", 1),
                            backend=d.backend, **kw)
    else:
        raise ValueError(f"arm kind must be 'lora' or 'qlora', got {arm['kind']!r}")


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, d: Design) -> float:
    """Mean cross-entropy over the answer tokens of ``d.heldout_n`` examples of their own
    seed (labkit's training loss, on examples no run trains on)."""
    ids, labels = get_task(d.task).batch(d.heldout_n, seed=d.heldout_seed)
    model.eval()
    return float(train.lm_loss(model(ids), labels))


def _key(arm: dict) -> tuple:
    return tuple(sorted(arm.items()))


@functools.cache
def _fixed_budget(d: Design, arm_key: tuple, seed: int) -> dict:
    arm = dict(arm_key)
    seed_everything(seed, threads=d.threads)
    model = copy.deepcopy(base_model())
    _adapt(model, d, arm)
    trainable = lora.model_params(model).trainable
    train.train(model, d.task, steps=d.steps, lr=d.lr, batch_size=d.batch, eval_every=None,
                eval_n=1, seed=seed, progress=False)
    return {"loss": heldout_loss(model, d),
            "exact_match": train.evaluate(model, d.task, n=d.em_n, seed=d.em_seed),
            "trainable": trainable}


def fixed_budget(d: Design, arm: dict, seed: int) -> dict:
    """Train one arm for ``d.steps`` steps with ``seed``; returns ``loss`` (held-out),
    ``exact_match`` (in [0, 1]) and ``trainable`` (parameters). Cached per process."""
    return dict(_fixed_budget(d, _key(arm), seed))


@functools.cache
def _steps_to_target(d: Design, arm_key: tuple, ratio: float, seed: int) -> dict:
    arm = dict(arm_key)
    seed_everything(seed, threads=d.threads)
    model = copy.deepcopy(base_model())
    _adapt(model, d, arm)
    trainable = lora.model_params(model).trainable
    opt = "adamw" if ratio == 1 else train.loraplus(ratio=ratio)
    h = train.train(model, d.task, steps=d.cap, lr=d.lr, batch_size=d.batch,
                    eval_every=d.eval_every, eval_n=d.eval_n, seed=seed, optimizer=opt,
                    stop_at=d.target, progress=False)
    reached = h.acc[-1] >= d.target
    return {"steps": h.eval_step[-1] if reached else d.cap, "reached": bool(reached),
            "final_acc": h.acc[-1], "trainable": trainable}


def steps_to_target(d: Design, arm: dict, ratio: float, seed: int) -> dict:
    """Steps until exact match first reaches ``d.target`` (evaluated every
    ``d.eval_every`` steps), with AdamW (``ratio == 1``) or LoRA+ at ``ratio``; ``d.cap``
    and ``reached=False`` if it never does. Cached per process."""
    return dict(_steps_to_target(d, _key(arm), float(ratio), seed))


@functools.cache
def _step0(d: Design, arm_key: tuple) -> tuple[dict, int]:
    arm = dict(arm_key)
    seed_everything(0, threads=d.threads)  # zero init draws A (B = 0 makes it irrelevant)
    model = copy.deepcopy(base_model())
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in d.targets}
    _adapt(model, d, arm)
    out = {}
    with torch.no_grad():
        for name, w in weights.items():
            layer = model.get_submodule(name)
            approx = layer.base_weight().float() + layer.delta_weight().float()
            out[name] = float(torch.linalg.matrix_norm(w.float() - approx)
                              / torch.linalg.matrix_norm(w.float()))
    return out, lora.model_params(model).trainable


def step0_errors(d: Design, arm: dict) -> tuple[dict[str, float], int]:
    """Relative error ``||W - (Q + s B A)||_F / ||W||_F`` of each target layer at step 0
    for a 4-bit ``arm`` (``kind="qlora"``), by layer name; and the trainable parameters.
    Deterministic: nothing random reaches the numbers."""
    errors, trainable = _step0(d, _key(arm))
    return dict(errors), trainable
