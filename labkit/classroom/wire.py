"""What passes between the grader and a submission's kernel: plain values as JSON, no pickle.

``check`` computes every verdict in its own process: it runs the check from ``labkit.checks``
there, on a stand-in for the learner's function that forwards each call to the sandboxed
kernel (``labkit.classroom.remote``). This module is both ends of that wire:

* :func:`encode` / :func:`decode` turn a value into JSON and back. Only data crosses:
  ``None``, ``bool``, ``int``, ``float``, ``str``, lists, tuples, dicts with string keys, and
  torch tensors (their bytes as safetensors, base64 in the JSON). Each value is rebuilt on
  the other side as Python's own type: a subclass of ``int`` arrives as a plain ``int``
  holding its value, so an ``__eq__`` that always says True never reaches the grader's
  comparison; a numpy scalar arrives as an ``int`` or ``float``. Anything else arrives as an
  :class:`Opaque` whose class carries the original type's name (so "got ndarray" still reads
  right) and which equals nothing. One labkit type crosses as data too: a
  :class:`labkit.configs.ModelConfig` (its fields, rebuilt with ``ModelConfig.from_dict``,
  which refuses unknown fields), since lesson 06's exercise takes a model's config.
* :func:`serve` runs in the kernel (the grader sends
  ``__import__("labkit.classroom.wire", fromlist=["serve"]).serve("<json>")`` as a user
  expression): it looks up, calls, or back-propagates through the learner's function and
  returns the JSON reply. It runs inside code the submission controls, so the grader
  trusts nothing in a reply but its shape: a value the grader then checks itself.

Imports: the standard library; torch and safetensors only when a tensor crosses.
"""

from __future__ import annotations

import base64
import json
import numbers
import sys

#: Nested containers deeper than this arrive as Opaque.
_MAX_DEPTH = 16


class WireError(ValueError):
    """A message on the wire is not what the protocol allows (a broken or hostile kernel)."""


class Opaque:
    """A value the wire does not carry, by its type's name; it equals nothing but itself."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _opaque_class(type_name: str) -> type:
    name = type_name if type_name.isidentifier() else "object"
    return type(name, (Opaque,), {})


def _torch():
    """torch when it is already imported (no value can be a tensor otherwise), else None."""
    return sys.modules.get("torch")


def _model_config() -> type:
    from labkit.configs import ModelConfig  # plain data, no torch: safe in both processes

    return ModelConfig


def encode(value, tensors: dict, depth: int = 0):
    """``value`` as a JSON-able tagged tree; tensors are stored in ``tensors`` by key."""
    torch = _torch()
    if value is None:
        return {"t": "none"}
    if isinstance(value, bool):  # bool has no subclasses
        return {"t": "bool", "v": bool(value)}
    if isinstance(value, numbers.Integral):  # int's own methods: an override changes nothing
        return {"t": "int", "v": int.__repr__(int.__int__(value) if isinstance(value, int)
                                               else int(value))}
    if isinstance(value, numbers.Real):
        as_float = float.__float__(value) if isinstance(value, float) else float(value)
        return {"t": "float", "v": float.__repr__(as_float)}
    if isinstance(value, str):
        return {"t": "str", "v": str.__str__(value)}
    if type(value) is _model_config():  # exactly labkit's config class, not a subclass
        return {"t": "config", "v": encode(value.to_dict(), tensors, depth + 1)}
    if torch is not None and isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        try:
            tensors[key] = value.detach().cpu().contiguous().clone()
        except Exception:  # a sparse or meta tensor, and the like
            return {"t": "opaque", "type": type(value).__name__, "repr": "a tensor"}
        return {"t": "tensor", "k": key, "grad": bool(value.requires_grad)}
    if depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {"t": kind, "v": [encode(v, tensors, depth + 1) for v in value]}
    if depth < _MAX_DEPTH and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"t": "dict", "v": [[str.__str__(k), encode(v, tensors, depth + 1)]
                                   for k, v in value.items()]}
    text = object.__repr__(value)[:200]
    return {"t": "opaque", "type": type(value).__name__, "repr": text}


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise WireError(f"malformed value on the wire: {what}")


def decode(tree, tensors: dict):
    """The value :func:`encode` described, rebuilt as Python's own types."""
    _check(isinstance(tree, dict) and isinstance(tree.get("t"), str), "no type tag")
    t, v = tree["t"], tree.get("v")
    if t == "none":
        return None
    if t == "bool":
        _check(isinstance(v, bool), "bool")
        return v
    if t in ("int", "float"):
        _check(isinstance(v, str) and len(v) < 4000, t)
        try:
            return int(v) if t == "int" else float(v)
        except ValueError:
            raise WireError(f"malformed value on the wire: {t} {v[:40]!r}") from None
    if t == "str":
        _check(isinstance(v, str), "str")
        return v
    if t in ("list", "tuple"):
        _check(isinstance(v, list), t)
        items = [decode(x, tensors) for x in v]
        return tuple(items) if t == "tuple" else items
    if t == "dict":
        _check(isinstance(v, list) and all(isinstance(p, list) and len(p) == 2
                                           and isinstance(p[0], str) for p in v), "dict")
        return {k: decode(x, tensors) for k, x in v}
    if t == "tensor":
        _check(tree.get("k") in tensors, "tensor key")
        out = tensors[tree["k"]].clone()
        if tree.get("grad") is True and out.is_floating_point():
            out.requires_grad_(True)
        return out
    if t == "config":
        fields = decode(v, tensors)
        _check(isinstance(fields, dict) and all(
            isinstance(x, (bool, int, float, str)) for x in fields.values()), "config")
        try:
            return _model_config().from_dict(fields)
        except (TypeError, ValueError) as exc:
            raise WireError(f"malformed value on the wire: config ({exc})") from None
    if t == "opaque":
        name, text = str(tree.get("type", "object")), str(tree.get("repr", ""))[:200]
        return _opaque_class(name)(text)
    raise WireError(f"malformed value on the wire: unknown tag {t!r}")


def pack(payload: dict, values: dict) -> str:
    """``payload`` plus ``values`` (name -> value) as one JSON message."""
    tensors: dict = {}
    msg = dict(payload, values={k: encode(v, tensors) for k, v in values.items()})
    if tensors:
        from safetensors.torch import save

        msg["tensors"] = base64.b64encode(save(tensors)).decode("ascii")
    return json.dumps(msg)


def unpack(text) -> tuple[dict, dict]:
    """(the message, its values decoded) from :func:`pack`'s JSON."""
    try:
        msg = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError(f"not a JSON message: {type(exc).__name__}: {exc}") from None
    _check(isinstance(msg, dict) and isinstance(msg.get("values", {}), dict), "message")
    tensors = {}
    if "tensors" in msg:
        from safetensors.torch import load

        try:
            tensors = load(base64.b64decode(msg["tensors"], validate=True))
        except Exception as exc:
            raise WireError(f"unreadable tensors: {type(exc).__name__}: {exc}") from None
    try:
        return msg, {k: decode(v, tensors) for k, v in msg.get("values", {}).items()}
    except RecursionError:
        raise WireError("malformed value on the wire: nested too deeply") from None


# ----------------------------------------------------------------------------- kernel side

#: Graphs kept for a later backward request: id -> (inputs needing a gradient, output).
_GRAPHS: dict[int, tuple[list, object]] = {}


def _raised(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    return pack({"raised": {"type": type(exc).__name__, "message": first}}, {})


def serve(request: str) -> str:
    """Answer one grader request inside the kernel (see the module docstring)."""
    from IPython import get_ipython

    msg, values = unpack(request)
    op, ns = msg.get("op"), get_ipython().user_ns
    if op == "lookup":
        fn = ns.get(msg.get("fn"))
        return pack({"callable": callable(fn)}, {"type": type(fn).__name__})
    if op == "call":
        fn, args, kwargs = ns.get(msg.get("fn")), values["args"], values["kwargs"]
        torch = _torch()
        before = [a.detach().clone() if torch is not None and isinstance(a, torch.Tensor)
                  else None for a in args]
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # the learner's error (or exit), reported, never raised
            return _raised(exc)
        torch, grad_id, changed = _torch(), None, {}
        for i, (old, new) in enumerate(zip(before, args, strict=True)):
            if old is not None and not (new.shape == old.shape
                                        and torch.equal(new.detach(), old)):
                changed[str(i)] = new  # changed in place: the grader's copy follows
        if torch is not None and isinstance(result, torch.Tensor) and result.requires_grad:
            leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if leaves:
                grad_id = len(_GRAPHS)
                _GRAPHS[grad_id] = (leaves, result)
        return pack({"grad_id": grad_id}, {"result": result, "changed": changed})
    if op == "backward":
        leaves, out = _GRAPHS[int(msg["grad_id"])]
        torch = _torch()
        try:
            grads = torch.autograd.grad(out, leaves, values["grad"], allow_unused=True,
                                        retain_graph=True)
        except BaseException as exc:
            return _raised(exc)
        return pack({}, {"grads": list(grads)})
    raise WireError(f"unknown request {op!r}")
