"""Checkpoint and resume of a training run: the whole state the next step depends on, in
safetensors and JSON (no pickles).

With ``checkpoint_dir`` and ``checkpoint_every=k``, :func:`labkit.train.train` writes, after
every k-th step (and the last):

    state.safetensors   param/<name>        trainable parameters (adapters, or all)
                        optim/<i>/<key>     optimizer state tensors (AdamW's m, v, step)
                        rng/torch/<rank>    torch's CPU generator state per rank (dropout)
                        rng/cuda/<rank>     and the CUDA one, when training on a GPU
    state.json          step, the batch stream's random.Random state, history so far,
                        the optimizer's param_groups and a fingerprint of the run

``train(..., resume=True)`` loads it and continues from step + 1. Step t+1 is a function
of (theta_t, optimizer state_t, stream state_t, torch RNG_t), all restored exactly, so the
resumed run follows the identical trajectory (bitwise on a CPU with fixed threads).
The fingerprint (task, batch size, seed, optimizer class, trainable names and shapes) must
match, or the checkpoint is refused as another run's.

Imports: torch, safetensors, :mod:`labkit.data` (Task), and
:mod:`labkit.train`'s ``evaluation`` (History), ``optimizers`` (trainable names) and
``parallel`` (ranks).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from safetensors.torch import load_file, save_file

from labkit.data import Task
from labkit.train.evaluation import History
from labkit.train.optimizers import _named_trainable
from labkit.train.parallel import RANK_STRIDE, _rank_world

CKPT_TENSORS, CKPT_JSON = "state.safetensors", "state.json"


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
