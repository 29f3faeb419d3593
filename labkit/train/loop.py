"""One small training loop for every lesson.

``train(model, task, ...)`` runs ``steps`` optimizer steps on freshly sampled batches of a
task from :mod:`labkit.data`:

    for step in 1..steps:
        input_ids, labels = task.batch(batch_size, rng=stream)   # seeded stream
        loss = cross_entropy(model(input_ids), labels)          # answer tokens only
        loss.backward(); clip_grad_norm_(trainable, grad_clip); optimizer.step()
        every eval_every steps: exact-match accuracy by greedy generation

Only parameters with ``requires_grad=True`` reach the optimizer (and the clipping), so a
LoRA model whose base is frozen trains its adapters only, and the optimizer holds state for
them alone. The optimizer is a name in :data:`labkit.train.OPTIMIZERS` or a factory (see
:mod:`labkit.train.optimizers`); the loss and the evaluation are
:mod:`labkit.train.evaluation`'s; checkpoints and resume :mod:`labkit.train.checkpoint`'s;
under torchrun (DDP, FSDP) the loss is weighted by tokens as :mod:`labkit.train.parallel`
explains.

Determinism: the batches come from ``random.Random`` seeded by ``seed``, the loop does
nothing random in torch, so the same model, seed and thread count give the same history
on a CPU (lessons fix the threads with :func:`labkit.env.seed_everything`).

Precision: ``dtype=torch.bfloat16`` (or ``float16`` on CUDA, with loss scaling) runs the
forward pass under ``torch.autocast``; the parameters and optimizer state keep their own
dtype (fp32 unless you cast the model). ``None`` or ``float32`` trains in plain fp32.

Testing hook: the environment variable ``LABKIT_FAIL_AT_STEP=N`` makes the loop raise a
RuntimeError at the start of step N (before its batch is drawn), an injected fault to test
that a resumed run ends where an uninterrupted one ends.

Imports: torch, tqdm, :mod:`labkit.data` and the other modules of :mod:`labkit.train`.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from tqdm.auto import tqdm

from labkit.data import IGNORE_INDEX, Task, get_task
from labkit.train.checkpoint import _fingerprint, load_checkpoint, save_checkpoint
from labkit.train.evaluation import EVAL_SEED, History, _autocast, evaluate, lm_loss
from labkit.train.optimizers import OptimizerFactory, make_optimizer, trainable_parameters
from labkit.train.parallel import (
    RANK_STRIDE,
    _all_reduce_sum,
    _data_parallel_world,
    _fsdp_kind,
    _rank_world,
)

#: Environment variable of the fault-injection testing hook (see the module docstring).
FAIL_ENV = "LABKIT_FAIL_AT_STEP"


def _fail_at() -> int | None:
    raw = os.environ.get(FAIL_ENV)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{FAIL_ENV} must be an integer step, got {raw!r}") from None


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
        optimizer: a name in :data:`OPTIMIZERS` or a factory ``(params, lr=, weight_decay=)``
            (with a ``named_params`` parameter it also gets the ``(name, parameter)`` pairs:
            :func:`make_optimizer`). Each step the loop sets every param group's lr to the
            schedule's value times the group's own ratio to ``lr`` (fixed when the optimizer
            is built: 1 for plain optimizers, ``ratio`` for LoRA+'s ``B`` group).
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
    # Each group keeps its ratio to the peak lr under the schedule (LoRA+: B at ratio * A).
    # Read before a resume loads the optimizer: its groups then hold a scheduled lr.
    group_ratio = [g["lr"] / lr for g in opt.param_groups]
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
        for g, ratio in zip(opt.param_groups, group_ratio, strict=True):
            g["lr"] = cur_lr * ratio
        ids, labels = task.batch(batch_size, rng=stream)
        ids, labels = ids.to(device), labels.to(device)
        if world > 1:  # weight by tokens: see labkit.train.parallel
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
