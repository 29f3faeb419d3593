"""One small training loop for every lesson, and exact-match evaluation.

``train(model, task, ...)`` runs ``steps`` optimizer steps on freshly sampled batches of a
task from :mod:`labkit.data`:

    for step in 1..steps:
        input_ids, labels = task.batch(batch_size, rng=stream)   # seeded stream
        loss = cross_entropy(model(input_ids), labels)          # answer tokens only
        loss.backward(); clip_grad_norm_(trainable, grad_clip); optimizer.step()
        every eval_every steps: exact-match accuracy by greedy generation

Only parameters with ``requires_grad=True`` reach the optimizer (and the clipping), so a
LoRA model whose base is frozen trains its adapters only, and the optimizer holds state for
them alone. Optimizers are chosen by name from :data:`OPTIMIZERS` (``"adamw"``, ``"sgd"``; add
more with :func:`register_optimizer`) or passed as a factory
``factory(params, lr=..., weight_decay=...) -> torch.optim.Optimizer``.

Determinism: the batches come from ``random.Random`` seeded by ``seed``, the loop does
nothing random in torch, so the same model, seed and thread count give the same history
on a CPU (lessons fix the threads with :func:`labkit.env.seed_everything`).

Precision: ``dtype=torch.bfloat16`` (or ``float16`` on CUDA, with loss scaling) runs the
forward pass under ``torch.autocast``; the parameters and optimizer state keep their own
dtype (fp32 unless you cast the model). ``None`` or ``float32`` trains in plain fp32.

Checkpoint and resume: with ``checkpoint_dir`` and ``checkpoint_every=k`` the loop writes,
after every k-th step (and the last), the whole state that the next step depends on:

    state.safetensors   param/<name>        trainable parameters (adapters, or all)
                        optim/<i>/<key>     optimizer state tensors (AdamW's m, v, step)
                        rng/torch/<rank>    torch's CPU generator state per rank (dropout)
                        rng/cuda/<rank>     and the CUDA one, when training on a GPU
    state.json          step, the batch stream's random.Random state, history so far,
                        the optimizer's param_groups and a fingerprint of the run

``train(..., resume=True)`` loads it and continues from step + 1. Step t+1 is a function
of (theta_t, optimizer state_t, stream state_t, torch RNG_t), all restored exactly, so the
resumed run follows the identical trajectory (bitwise on a CPU with fixed threads).
No pickles: tensors in safetensors, everything else JSON.

Data parallel (DDP under ``torchrun``, see :mod:`labkit.distributed`): the same call trains a
``DistributedDataParallel`` model (or an FSDP one, without checkpoints: its ranks hold
shards). Every rank draws the same global batch from the stream and the task keeps its shard;
torch's RNG is seeded per rank (``seed + RANK_STRIDE * rank``), so dropout masks differ
between shards as they would between rows of one batch. The loss each rank backpropagates is
weighted by tokens, so that DDP's gradient average is the gradient of the global batch's mean
loss even when shards hold different numbers of answer tokens:

    rank r backpropagates  W * S_r / N,    S_r = summed token losses of shard r,
                                           N = sum_r N_r answer tokens in the global batch
    DDP averages:          (1/W) * sum_r W * S_r / N = (sum_r S_r) / N = global mean loss

``History.loss`` holds that global mean (the same number on every rank); only rank 0 shows
progress and writes checkpoints. Each step costs two scalar all-reduces besides DDP's
gradient buckets (N before the forward pass, the loss for the history after backward).

Testing hook: the environment variable ``LABKIT_FAIL_AT_STEP=N`` makes the loop raise a
RuntimeError at the start of step N (before its batch is drawn), an injected fault to test
that a resumed run ends where an uninterrupted one ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
import torch.nn.functional as F

from labkit.data import IGNORE_INDEX, TOKENIZER, Task, get_task
from labkit.generate import greedy

#: Seed of the default evaluation sample; training streams are seeded separately, so the
#: evaluation words are (up to chance collisions of short words) unseen in training.
EVAL_SEED = 10_000

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _sgd(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


#: Optimizer factories by name: ``factory(params, lr=, weight_decay=) -> Optimizer``.
OPTIMIZERS: dict[str, OptimizerFactory] = {"adamw": _adamw, "sgd": _sgd}


# --- bitsandbytes optimizers (QLoRA's GPU path; owned by the QLoRA issue) -----------------
_SAID_FALLBACK: set[str] = set()


def _bnb_optimizer(name: str, cls_name: str) -> OptimizerFactory:
    """A factory for ``bitsandbytes.optim.<cls_name>`` on CUDA, torch's AdamW elsewhere.

    Paged AdamW keeps its state in CUDA unified memory, which the driver pages out to CPU
    RAM when the GPU runs short (QLoRA, section 3); 8-bit AdamW stores the two moments in
    8 bits. Neither buys anything on the CPU, so there the same code gets torch's AdamW and
    says so once per process.
    """

    def factory(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        params = list(params)
        if params and params[0].device.type == "cuda":
            from labkit._deps import import_bnb

            return getattr(import_bnb().optim, cls_name)(params, lr=lr, weight_decay=weight_decay)
        if name not in _SAID_FALLBACK:
            _SAID_FALLBACK.add(name)
            warnings.warn(f"optimizer {name!r} needs a CUDA GPU (bitsandbytes {cls_name}); on "
                          f"the {params[0].device.type if params else 'cpu'} it is torch's "
                          "AdamW instead (same algorithm, 32-bit state)", UserWarning, stacklevel=3)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    return factory


OPTIMIZERS["paged_adamw"] = _bnb_optimizer("paged_adamw", "PagedAdamW")
OPTIMIZERS["adamw8bit"] = _bnb_optimizer("adamw8bit", "AdamW8bit")


def register_optimizer(name: str, factory: OptimizerFactory, overwrite: bool = False) -> None:
    """Make ``train(..., optimizer=name)`` use ``factory`` (e.g. bitsandbytes' paged AdamW).

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False.
    """
    if name in OPTIMIZERS and not overwrite:
        raise ValueError(f"optimizer {name!r} is already registered; pass overwrite=True")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    OPTIMIZERS[name] = factory


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that will train: those with ``requires_grad=True``."""
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: torch.nn.Module, optimizer: str | OptimizerFactory = "adamw",
                   lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build an optimizer over the trainable parameters only.

    Raises:
        ValueError: nothing is trainable, or an unknown optimizer name (lists the known).
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError(
            "the model has no trainable parameters (every requires_grad is False); unfreeze "
            "some, or add LoRA adapters, before training"
        )
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)} "
                "(or pass a factory(params, lr=, weight_decay=))"
            )
        factory = OPTIMIZERS[optimizer]
    elif callable(optimizer):
        factory = optimizer
    else:
        raise TypeError(f"optimizer must be a name or a factory, got {type(optimizer).__name__}")
    return factory(params, lr=lr, weight_decay=weight_decay)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("float16 training needs a CUDA GPU; on the CPU use torch.bfloat16")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, float32, bfloat16 or float16, got {dtype}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
            ) -> torch.Tensor:
    """Cross-entropy over the positions whose label is not ``IGNORE_INDEX``: their mean, or
    with ``reduction="sum"`` their sum (what a data-parallel rank contributes, see
    :func:`train`).

    logits (B, T, V), labels (B, T) -> scalar. Computed in fp32 whatever the logits' dtype.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str | Task, n: int = 200, seed: int = EVAL_SEED,
             dtype: torch.dtype | None = None, return_outputs: bool = False):
    """Exact-match accuracy of greedy generation on ``n`` fresh examples of ``task``.

    An example counts only if the generated text up to ``<eos>`` equals the answer and the
    model did write ``<eos>`` (within answer length + 1 tokens).

    Returns:
        accuracy in [0, 1]; with ``return_outputs``, ``(accuracy, rows)`` where rows are
        ``(prompt, answer, generated)`` strings.
    """
    task = get_task(task)
    pairs = task.sample(n, seed)
    prompts = [TOKENIZER.encode(p, bos=True) for p, _ in pairs]
    device = next(model.parameters()).device
    with _autocast(device, dtype):
        outs = greedy(model, prompts, max_new_tokens=task.max_answer_len)
    rows, correct = [], 0
    for (p, a), toks in zip(pairs, outs, strict=True):
        ok = toks == TOKENIZER.encode(a, eos=True)  # ids compared: unused ids just fail
        correct += ok
        if return_outputs:
            rows.append((p, a, _safe_decode(toks)))
    acc = correct / n
    return (acc, rows) if return_outputs else acc


def _safe_decode(toks: list[int]) -> str:
    return "".join(TOKENIZER.decode([t], skip_special=False) if t < 3 or 32 <= t < 127 else "?"
                   for t in toks)


@dataclass
class History:
    """What :func:`train` did, ready to plot: ``plt.plot(h.step, h.loss)``,
    ``plt.plot(h.eval_step, h.eval_acc["shift"])``. ``h["loss"]`` works too."""

    task: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_acc: dict[str, list[float]] = field(default_factory=dict)
    eval_time_s: list[float] = field(default_factory=list)  # seconds since start
    wall_s: float = 0.0
    stopped_early: bool = False

    def __getitem__(self, key: str):
        return getattr(self, key)

    @property
    def acc(self) -> list[float]:
        """Evaluation accuracies on the training task."""
        return self.eval_acc.get(self.task, [])

    @property
    def final_acc(self) -> float | None:
        return self.acc[-1] if self.acc else None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --- checkpoint and resume ----------------------------------------------------------------
#: Environment variable of the fault-injection testing hook (see the module docstring).
FAIL_ENV = "LABKIT_FAIL_AT_STEP"
CKPT_TENSORS, CKPT_JSON = "state.safetensors", "state.json"


def _fail_at() -> int | None:
    raw = os.environ.get(FAIL_ENV)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{FAIL_ENV} must be an integer step, got {raw!r}") from None


def _named_trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters by name, DDP's ``module.`` wrapper looked through, so that a
    checkpoint written under torchrun resumes in one process and the other way round."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


#: torch's generator on rank r starts from ``seed + RANK_STRIDE * r``: a prime far above any
#: seed the course uses, so no rank shares its dropout masks with another rank or another seed.
RANK_STRIDE = 1_000_003


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group, ``(0, 1)`` outside torch.distributed."""
    if _distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _fsdp_kind(model: torch.nn.Module) -> str | None:
    """``"fsdp1"`` (``FullyShardedDataParallel``), ``"fsdp2"`` (``fully_shard``) or None."""
    if not _distributed():  # FSDP needs a process group (and importing it takes ~0.5 s)
        return None
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return "fsdp1"
    return "fsdp2" if isinstance(model, FSDPModule) else None


def _data_parallel_world(model: torch.nn.Module) -> int:
    """W when ``model``'s gradients are averaged over W ranks (DDP, or FSDP, which averages
    its reduce-scattered gradients the same way), else 1."""
    if _distributed() and (isinstance(model, torch.nn.parallel.DistributedDataParallel)
                           or _fsdp_kind(model)):
        return torch.distributed.get_world_size()
    return 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's generators: the CPU one, and the GPU's when training there."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _fingerprint(model: torch.nn.Module, task: Task, opt: torch.optim.Optimizer,
                 batch_size: int, seed: int) -> dict:
    """What must agree between the run that saved a checkpoint and the run resuming it."""
    return {"task": task.name, "batch_size": batch_size, "seed": seed,
            "optimizer": type(opt).__name__,
            "trainable": {n: list(p.shape) for n, p in _named_trainable(model)}}


def _split_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer ``state_dict`` -> (tensors for safetensors, the rest for JSON)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{i}/{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(i), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    step: int, stream: random.Random, hist: History, fingerprint: dict) -> Path:
    """Write the training state after ``step`` to ``directory`` (two files, written atomically).

    Under torch.distributed (DDP) the replicas are identical, so only rank 0 writes; the
    ranks' generator states differ (each draws its own dropout masks), so they are gathered
    to rank 0 first and saved per rank. Every rank then waits at a barrier until the files
    are in place, so no rank can read a half-replaced checkpoint.

    Returns:
        the directory.
    """
    d = Path(directory)
    rank, world = _rank_world()
    rng = [_rng_states(next(model.parameters()).device)]  # this rank's; rank r's at [r]
    if world > 1:
        mine, rng = rng[0], [None] * world
        torch.distributed.all_gather_object(rng, mine)
    if rank == 0:
        _write_checkpoint(d, model, opt, step, stream, hist, fingerprint, rng)
    if world > 1:
        torch.distributed.barrier()
    return d


def _write_checkpoint(d: Path, model, opt, step, stream, hist, fingerprint, rng) -> None:
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"param/{n}": p.detach().contiguous().cpu() for n, p in _named_trainable(model)}
    opt_tensors, opt_json = _split_optimizer_state(opt)
    tensors.update(opt_tensors)
    for r, states in enumerate(rng):
        tensors.update({f"rng/{kind}/{r}": t.cpu() for kind, t in states.items()})
    version, internal, gauss = stream.getstate()
    meta = {"step": step, "fingerprint": fingerprint, "optimizer": opt_json,
            "world_size": len(rng),
            "stream_state": [version, list(internal), gauss], "history": hist.to_dict()}
    # write both to temporaries, then rename: a crash mid-save leaves the old checkpoint whole
    save_file(tensors, str(d / (CKPT_TENSORS + ".tmp")))
    (d / (CKPT_JSON + ".tmp")).write_text(json.dumps(meta))
    os.replace(d / (CKPT_TENSORS + ".tmp"), d / CKPT_TENSORS)
    os.replace(d / (CKPT_JSON + ".tmp"), d / CKPT_JSON)


def load_checkpoint(directory: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    stream: random.Random, fingerprint: dict) -> tuple[int, History]:
    """Restore what :func:`save_checkpoint` wrote; returns ``(step, history)``.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``.
        ValueError: the checkpoint belongs to another run (task, batch size, seed, optimizer
            or trainable parameter names / shapes differ); the message lists the differences.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / CKPT_JSON).is_file() or not (d / CKPT_TENSORS).is_file():
        raise FileNotFoundError(f"no checkpoint in {str(d)!r} (expected {CKPT_JSON} and "
                                f"{CKPT_TENSORS}); train once with checkpoint_dir= and "
                                "checkpoint_every= first, or pass resume=False")
    meta = json.loads((d / CKPT_JSON).read_text())
    saved = meta["fingerprint"]
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs this run {fingerprint[k]!r}"
             for k in fingerprint if k != "trainable" and saved.get(k) != fingerprint[k]]
    if saved.get("trainable") != fingerprint["trainable"]:
        a, b = saved.get("trainable", {}), fingerprint["trainable"]
        odd = sorted(set(a) ^ set(b)) or sorted(n for n in a if a[n] != b.get(n))
        diffs.append(f"trainable parameters differ ({len(a)} saved, {len(b)} here; e.g. "
                     f"{', '.join(odd[:3])})")
    if diffs:
        raise ValueError(f"checkpoint in {str(d)!r} does not match this run: "
                         + "; ".join(diffs) + ". Resume with the same model, adapters and "
                         "arguments, or start fresh with another checkpoint_dir")
    tensors = load_file(str(d / CKPT_TENSORS))
    with torch.no_grad():
        for n, p in _named_trainable(model):
            p.copy_(tensors[f"param/{n}"])
    device = next(model.parameters()).device
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, i, k = key.split("/", 2)
            # AdamW keeps its 'step' counter on the CPU unless capturable; others follow params
            state.setdefault(int(i), {})[k] = v if k == "step" else v.to(device)
    for i, st in meta["optimizer"]["scalars"].items():
        state.setdefault(int(i), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    rank, world = _rank_world()
    if meta["world_size"] != world:
        warnings.warn(f"checkpoint written by {meta['world_size']} process(es), resumed by "
                      f"{world}: weights, optimizer and batch stream continue exactly, but the "
                      "dropout generators cannot (with dropout 0 nothing changes)", UserWarning,
                      stacklevel=3)
    if f"rng/torch/{rank}" in tensors:
        torch.set_rng_state(tensors[f"rng/torch/{rank}"])
        if device.type == "cuda" and f"rng/cuda/{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng/cuda/{rank}"], device)
    else:  # a rank the saving run did not have: a fresh generator of its own
        torch.manual_seed(fingerprint["seed"] + RANK_STRIDE * rank + meta["step"])
    version, internal, gauss = meta["stream_state"]
    stream.setstate((version, tuple(internal), gauss))
    hist = History(**meta["history"])
    return meta["step"], hist


def train(model: torch.nn.Module, task: str | Task, steps: int = 200, lr: float = 3e-3,
          batch_size: int = 64, eval_every: int | None = None, eval_n: int = 200,
          eval_seed: int = EVAL_SEED, eval_tasks: list[str | Task] | None = None,
          seed: int = 0, progress: bool = True, optimizer: str | OptimizerFactory = "adamw",
          weight_decay: float = 0.0, grad_clip: float | None = 1.0, warmup_steps: int = 0,
          schedule: str = "constant", stop_at: float | None = None,
          device: str | torch.device | None = None, dtype: torch.dtype | None = None,
          checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
          resume: bool = False) -> History:
    """Train ``model`` on ``task`` and return its :class:`History`.

    Args:
        model: any module mapping (B, T) ids to (B, T, V) logits; trained in place.
        task: a :class:`labkit.data.Task` or its name.
        steps: optimizer steps (one fresh batch each).
        lr: peak learning rate.
        batch_size: examples per step.
        eval_every: evaluate every this many steps, and at step 0 and the last step;
            ``None`` evaluates only after the last step.
        eval_n, eval_seed: size and seed of the evaluation sample (the same each time).
        eval_tasks: tasks to evaluate besides ``task`` (e.g. the pretraining task, to
            watch forgetting); the training task is always evaluated.
        seed: seeds the batch stream (and torch's RNG, per rank under DDP).
        progress: show a tqdm progress bar (on rank 0 only under torchrun).
        optimizer: a name in :data:`OPTIMIZERS` or a factory ``(params, lr=, weight_decay=)``.
        weight_decay: decoupled weight decay (AdamW) / L2 (SGD).
        grad_clip: max global grad norm over trainable parameters; ``None`` turns it off.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: ``"constant"`` or ``"cosine"`` (decay to 0 at the last step).
        stop_at: stop after the evaluation that first reaches this accuracy on ``task``.
        device: move the model there first; ``None`` keeps it where it is.
        dtype: autocast compute dtype (``torch.bfloat16``; ``float16`` on CUDA only).
        checkpoint_dir: where :func:`save_checkpoint` writes (one checkpoint, overwritten).
        checkpoint_every: save after every this many steps and after the last;
            ``None`` with a ``checkpoint_dir`` saves after the last step only.
        resume: continue from the checkpoint in ``checkpoint_dir`` (its step + 1 .. steps).

    Raises:
        ValueError: bad numbers, unknown task / optimizer / schedule, nothing trainable, a
            checkpoint of another run.
        FileNotFoundError: ``resume`` without a checkpoint.
        RuntimeError: the injected fault ``LABKIT_FAIL_AT_STEP`` (a testing hook).
    """
    task = get_task(task)
    for name, v in (("steps", steps), ("batch_size", batch_size), ("eval_n", eval_n)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every must be a positive int or None, got {eval_every!r}")
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or isinstance(checkpoint_every, bool)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int or None, got "
                         f"{checkpoint_every!r}")
    if (checkpoint_every is not None or resume) and checkpoint_dir is None:
        raise ValueError("checkpoint_every / resume need checkpoint_dir= (where checkpoints go)")
    fsdp = _fsdp_kind(model)
    if fsdp and checkpoint_dir is not None:
        raise ValueError(f"checkpoints of an FSDP model ({fsdp}) are not supported: each rank "
                         "holds only its shard of the weights and optimizer state, which "
                         "save_checkpoint would write as if whole. Train with DDP to "
                         "checkpoint, or pass checkpoint_dir=None")
    fail_at = _fail_at()
    tasks = [task] + [t for t in map(get_task, eval_tasks or []) if t.name != task.name]

    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    opt = make_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)
    params = trainable_parameters(model)
    _autocast(device, dtype)  # validate dtype before the first step
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def lr_at(step: int) -> float:  # step is 1-based
        if step <= warmup_steps:
            return lr * step / warmup_steps
        if schedule == "cosine":
            frac = (step - warmup_steps) / max(1, steps - warmup_steps)
            return lr * 0.5 * (1 + math.cos(math.pi * frac))
        return lr

    rank, _ = _rank_world()
    world = _data_parallel_world(model)  # > 1: a DDP replica, gradients averaged over ranks
    torch.manual_seed(seed + RANK_STRIDE * rank)  # the same stream, own dropout masks
    stream = random.Random(f"train/{task.name}/{seed}")
    hist = History(task=task.name, eval_acc={t.name: [] for t in tasks})
    fingerprint = _fingerprint(model, task, opt, batch_size, seed)
    start = 0
    if resume:
        start, hist = load_checkpoint(checkpoint_dir, model, opt, stream, fingerprint)
        if start > steps:
            raise ValueError(f"the checkpoint is at step {start}, past steps={steps}; pass "
                             f"steps >= {start} to continue it")
    t0 = time.perf_counter() - hist.wall_s  # a resumed run's clock continues

    def run_eval(step: int) -> float:
        for t in tasks:
            hist.eval_acc[t.name].append(evaluate(model, t, n=eval_n, seed=eval_seed, dtype=dtype))
        hist.eval_step.append(step)
        hist.eval_time_s.append(time.perf_counter() - t0)
        return hist.eval_acc[task.name][-1]

    from tqdm.auto import tqdm

    bar = tqdm(range(start + 1, steps + 1), disable=not progress or rank != 0,
               desc=f"train {task.name}", leave=False)
    if eval_every is not None and start == 0:
        run_eval(0)
    model.train()
    for step in bar:
        if fail_at is not None and step == fail_at:
            raise RuntimeError(f"injected fault at step {step} ({FAIL_ENV}={fail_at}; a "
                               "testing hook: unset it to train normally)")
        cur_lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        ids, labels = task.batch(batch_size, rng=stream)
        ids, labels = ids.to(device), labels.to(device)
        if world > 1:  # weight by tokens: see "Data parallel" in the module docstring
            n_tokens = _all_reduce_sum((labels != IGNORE_INDEX).sum().float())
        with _autocast(device, dtype):
            logits = model(ids)
        if world > 1:
            loss_sum = lm_loss(logits, labels, reduction="sum")
            loss = loss_sum * (world / n_tokens)
        else:
            loss = lm_loss(logits, labels)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if grad_clip is not None and fsdp == "fsdp1":  # each rank holds a piece of each
            model.clip_grad_norm_(grad_clip)  # gradient: the norm needs all the pieces
        elif grad_clip is not None:  # (DDP and FSDP2's DTensors see the whole norm)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if world > 1:  # the global batch's mean loss, the same on every rank
            loss = _all_reduce_sum(loss_sum.detach()) / n_tokens
        hist.step.append(step)
        hist.loss.append(loss.item())
        hist.lr.append(cur_lr)
        last = step == steps
        if (eval_every is not None and step % eval_every == 0) or last:
            acc = run_eval(step)
            model.train()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.0%}")
            if stop_at is not None and acc >= stop_at:
                hist.stopped_early = not last
        if checkpoint_dir is not None and (
                last or hist.stopped_early
                or (checkpoint_every is not None and step % checkpoint_every == 0)):
            hist.wall_s = time.perf_counter() - t0
            save_checkpoint(checkpoint_dir, model, opt, step, stream, hist, fingerprint)
        if hist.stopped_early:
            break
    bar.close()
    model.eval()
    hist.wall_s = time.perf_counter() - t0
    return hist
