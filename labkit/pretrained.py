"""The course's pretrained model on disk: save it, load it, check it against its card.

The shipped model is ``labkit/checkpoints/tiny-reverse.safetensors`` (weights, with the
config in the safetensors header) and ``tiny-reverse.json`` (its card: config, tasks,
metrics, sha256), both produced by ``scripts/pretrain.py``. :func:`load_pretrained`
refuses a file whose hash or tensor shapes disagree with the card, so a learner never
trains on a silently different model.

Imports: labkit.models (the architecture), labkit.configs, labkit.data (the tokenizer).
``labkit.models`` re-exports these names lazily (lessons call ``models.load_pretrained``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from labkit import _deps  # noqa: F401  (one clear line when torch is missing)

# isort: split
import torch
from safetensors.torch import load_file, save_file

from labkit import data
from labkit.configs import ModelConfig
from labkit.models import CHECKPOINT_DIR, DEFAULT_PRETRAINED, LlamaLM, build


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Pretrained(NamedTuple):
    """What :func:`load_pretrained` returns; unpacks as ``model, tokenizer, card``."""

    model: LlamaLM
    tokenizer: object  # labkit.data.Tokenizer
    card: dict


def save_pretrained(model: LlamaLM, path: str | Path) -> str:
    """Save a model's weights as safetensors (config in the header metadata); returns the
    file's sha256, which the card beside it records (``scripts/pretrain.py`` writes both).

    Not a training checkpoint: :func:`labkit.train.save_checkpoint` saves the optimizer,
    data stream and random states needed to resume a run.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(model.config.to_dict())})
    return sha256_file(path)


_REDO = "restore the card (git checkout) or re-run `python scripts/pretrain.py`"


def _read_card(card_path: Path) -> dict:
    """The card as a dict; a clear error, naming the file, if it is not JSON or lacks a
    ``config`` object."""
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"checkpoint card {card_path} is not valid JSON ({exc}); "
                         f"{_REDO}") from None
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict):
        raise ValueError(f"checkpoint card {card_path} has no `config` object (the model's "
                         f"architecture); {_REDO}")
    return card


def load_pretrained(name: str = DEFAULT_PRETRAINED, directory: str | Path | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                    ) -> Pretrained:
    """Load the course's pretrained model and check it is the one its card describes.

    Reads ``<directory>/<name>.json`` (the card: config, tasks, metrics, sha256) and
    ``<directory>/<name>.safetensors``; verifies the file's sha256 against the card and
    the tensors' names and shapes against the card's config.

    Args:
        name: checkpoint name (default ``"tiny-reverse"``).
        directory: where the files are; default ``labkit/checkpoints``.
        device, dtype: where and in which dtype to put the model.

    Returns:
        ``Pretrained(model, tokenizer, card)``, the model in eval mode.

    Raises:
        FileNotFoundError: no such checkpoint (lists the ones present).
        ValueError: the card is not JSON or has no valid ``config`` (the path is named), or
            the hash or the tensors do not match the card.
    """
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    card_path, st_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not card_path.exists() or not st_path.exists():
        have = sorted(p.stem for p in directory.glob("*.safetensors"))
        raise FileNotFoundError(
            f"no checkpoint {name!r} in {directory} (need {name}.json and {name}.safetensors); "
            f"present: {have or 'none'}. Create it with `python scripts/pretrain.py`."
        )
    card = _read_card(card_path)
    digest = sha256_file(st_path)
    if digest != card.get("sha256"):
        raise ValueError(
            f"checkpoint {st_path} does not match its card: sha256 is {digest}, the card "
            f"{card_path.name} says {card.get('sha256')}. The file is corrupt or was changed; "
            "restore it (git checkout) or re-run `python scripts/pretrain.py`."
        )
    try:
        cfg = ModelConfig.from_dict(card["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the config in {card_path} is not a valid ModelConfig ({exc}); "
                         f"{_REDO}") from None
    model = build(cfg, device="cpu")
    state = load_file(str(st_path))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diffs = [f"{k}: card config wants {expected.get(k)}, file has {got.get(k)}"
                 for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
        raise ValueError(
            f"checkpoint {st_path.name} does not fit the config in {card_path.name} "
            f"({len(diffs)} tensors differ): " + "; ".join(diffs[:5])
            + ". Card and weights come from different runs; re-run `python scripts/pretrain.py`."
        )
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype).eval()
    return Pretrained(model, data.Tokenizer(), card)
