"""Adapter files and checkpoint cards: what load_adapter refuses, leaving the model as it
was (a deep snapshot compares it, see test_model_ops_reliability.py), the sha256 record that
save_adapter writes and load_adapter checks, and errors that name the bad file.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import struct

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from labkit import lora as L  # noqa: E402
from labkit import models  # noqa: E402
from labkit.models import CHECKPOINT_DIR, DEFAULT_PRETRAINED  # noqa: E402
from tests.test_model_ops_reliability import (  # noqa: E402
    ATTN,
    fails_unchanged,
    randomize,
    tiny,
)

IDS = torch.tensor([[1, 5, 9, 3, 7, 2, 11, 4]])

# --------------------------------------------------------------------------- load_adapter


@pytest.fixture
def saved(tmp_path):
    """An adapter (q_proj, v_proj, r=2) trained on ``tiny()``, saved by labkit."""
    m = tiny()
    L.add_lora(m, ATTN, r=2, alpha=4)
    randomize(m)
    L.save_adapter(m, tmp_path / "ad")
    return tmp_path / "ad", m


def _edit_config(directory, **changes):
    path = directory / L.CONFIG_NAME
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


def test_load_adapter_shape_mismatch_removes_the_injected_adapter(saved):
    directory, _ = saved
    _edit_config(directory, r=3)  # the tensors are r=2: they do not fit what r=3 injects
    m = tiny()
    fails_unchanged(m, ValueError, "shapes do not fit", L.load_adapter, directory)
    assert not list(L.lora_layers(m))


def test_load_adapter_into_an_existing_adapter_fails_without_switching(saved):
    directory, _ = saved
    tensors = load_file(directory / L.WEIGHTS_NAME)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, directory / L.WEIGHTS_NAME)  # no record: a PEFT-like file
    m = tiny()
    L.add_lora(m, ATTN, r=2, alpha=4, adapter_name="b")
    L.add_lora(m, ["o_proj"], r=2, alpha=4, adapter_name="a")  # "a" is active now
    randomize(m)
    fails_unchanged(m, ValueError, "has no tensors for 1 layers", L.load_adapter, directory,
                    adapter_name="b", is_trainable=True)


@pytest.mark.parametrize("change, match", [
    (dict(lora_alpha=float("inf")), "alpha must be a positive number, finite"),
    (dict(target_modules="(q_proj"), "not a valid regular expression"),
    (dict(target_modules=["nope"]), "match no module"),
    (dict(bias="some"), "bias must be one of"),
])
def test_load_adapter_bad_configs(saved, change, match):
    directory, _ = saved
    path = _edit_config(directory, **change)
    m = tiny()
    fails_unchanged(m, ValueError, match, L.load_adapter, directory)
    if "alpha" in match or "regular" in match:
        with pytest.raises(ValueError, match=re.escape(str(path))):
            L.read_adapter_config(directory)


def test_adapter_config_that_is_not_json_names_the_file(saved):
    directory, _ = saved
    path = directory / L.CONFIG_NAME
    path.write_text('{"r": 2, "lora_alpha": ')
    m = tiny()
    fails_unchanged(m, ValueError, re.escape(str(path)) + " is not valid JSON",
                    L.load_adapter, directory)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(str(path)) + " holds a JSON list"):
        L.read_adapter_config(directory)


def test_save_adapter_records_the_sha256_of_its_tensors(saved, tmp_path):
    """The record: sha256 over name, dtype, shape and bytes of each tensor, in name order,
    base64 (computed here from the file's own bytes). It costs at most 64 bytes, so the
    adapter sizes the lessons print (73.2 kB, 266 kB, ...) stay what they were."""
    directory, m = saved
    weights = directory / L.WEIGHTS_NAME
    with safe_open(str(weights), "pt") as f:
        record = f.metadata()[L.DIGEST_KEY]
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": "torch.float32"}
    h = hashlib.sha256()
    for k in sorted(k for k in header if k != "__metadata__"):
        start, end = header[k]["data_offsets"]
        h.update(f"{k}\0{dtypes[header[k]['dtype']]}\0{tuple(header[k]['shape'])}\0".encode())
        h.update(raw[8 + n + start:8 + n + end])
    assert record == base64.b64encode(h.digest()).decode()
    plain = tmp_path / "plain.safetensors"
    save_file(L.adapter_state_dict(m), plain, metadata={"format": "pt"})
    assert 0 < weights.stat().st_size - plain.stat().st_size <= 64


def _flip_one_bit(weights):
    """Flip the lowest bit of the first data byte of the second tensor (in name order):
    a finite, plausible value, just not the one that was saved."""
    raw = bytearray(weights.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = sorted(k for k in header if k != "__metadata__")[1]
    raw[8 + n + header[key]["data_offsets"][0]] ^= 0x01
    weights.write_bytes(bytes(raw))


def test_load_adapter_refuses_a_tampered_file(saved):
    directory, _ = saved
    weights = directory / L.WEIGHTS_NAME
    tensors = load_file(weights)
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    _flip_one_bit(weights)
    m = tiny()
    damaged = re.escape(f"{weights}: its tensors (8: names, shapes and bytes) do not match "
                        "the sha256 recorded when it was saved") + ".*restore it or save"
    fails_unchanged(m, ValueError, damaged, L.load_adapter, directory)
    save_file(dict(list(tensors.items())[1:]), weights, metadata=meta)  # one tensor dropped
    fails_unchanged(m, ValueError, "do not match the sha256", L.load_adapter, directory)
    key = sorted(tensors)[0]
    tensors[key.replace("lora_A", "lora_C")] = tensors.pop(key)  # one tensor renamed
    save_file(tensors, weights, metadata=meta)
    fails_unchanged(m, ValueError, "do not match the sha256", L.load_adapter, directory)


def test_files_without_the_record_still_load(saved):
    directory, m = saved
    weights = directory / L.WEIGHTS_NAME
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # as PEFT writes it
    fresh = tiny()
    L.load_adapter(fresh, directory)
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS), m(IDS), rtol=0, atol=0)


def test_load_adapter_refuses_non_finite_tensors(saved):
    directory, _ = saved
    weights = directory / L.WEIGHTS_NAME
    tensors = load_file(weights)
    key = sorted(tensors)[2]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    fails_unchanged(tiny(), ValueError, re.escape(f"tensor {key!r} holds 1 NaN"),
                    L.load_adapter, directory)


# --------------------------------------------------------------------------- pretrained cards


@pytest.fixture
def checkpoint(tmp_path):
    for ext in ("json", "safetensors"):
        shutil.copy(CHECKPOINT_DIR / f"{DEFAULT_PRETRAINED}.{ext}", tmp_path)
    return tmp_path / f"{DEFAULT_PRETRAINED}.json"


def test_pretrained_card_that_is_not_json_names_the_file(checkpoint):
    checkpoint.write_text(checkpoint.read_text()[:40])
    with pytest.raises(ValueError, match=re.escape(str(checkpoint)) + " is not valid JSON"):
        models.load_pretrained(directory=checkpoint.parent)


def test_pretrained_card_without_config_names_the_file(checkpoint):
    card = json.loads(checkpoint.read_text())
    del card["config"]
    checkpoint.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=re.escape(str(checkpoint)) + " has no `config`"):
        models.load_pretrained(directory=checkpoint.parent)
    card["config"] = {"vocab_size": 128, "colour": "blue"}
    checkpoint.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=re.escape(str(checkpoint)) + " is not a valid"):
        models.load_pretrained(directory=checkpoint.parent)
