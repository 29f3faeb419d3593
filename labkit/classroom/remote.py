"""The learner's function as the grader sees it: a stand-in that calls into the kernel.

``check`` runs a check from ``labkit.checks`` in its own process and hands it a
:class:`RemoteFunction` instead of the learner's function. Calling it sends the arguments the
check chose to the sandboxed kernel (``labkit.classroom.wire``), runs the learner's function
there, and returns the result rebuilt as plain data; the check then compares it with its
reference exactly as it would in the notebook, but nothing the submission defined (an
``__eq__``, a patched check, a printed line) takes part in the comparison.

What the check can observe stays the same as in the notebook:

* an exception in the learner's function is raised again here under its name
  (``NotImplementedError`` stays itself, so an untouched stub reads "not done yet";
  ``MemoryError`` says that the kernel's memory limit was reached);
* a tensor argument changed in place in the kernel is changed the same way here;
* a tensor result with a gradient is joined to the check's autograd graph by
  :func:`_bridge`: its backward asks the kernel for the gradients of the inputs.

Imports: ``labkit.classroom.wire`` and ``.sandbox``, the standard library; torch only when
the check passes tensors (it is imported by then).
"""

from __future__ import annotations

import builtins
import sys

from labkit.classroom.sandbox import Sandbox, SandboxStop, out_of_memory
from labkit.classroom.wire import WireError, pack, unpack


def _exception(raised: dict, memory_gb: float) -> Exception:
    """The learner's exception, rebuilt by name (a builtin one as itself)."""
    name, message = str(raised.get("type", "Exception")), str(raised.get("message", ""))
    if name == "MemoryError":
        return MemoryError(out_of_memory(memory_gb))
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = type(name if name.isidentifier() else "Error", (Exception,), {})
    try:
        return cls(message)
    except Exception:  # a builtin whose constructor wants other arguments
        return type(name, (Exception,), {})(message)


class RemoteFunction:
    """Calls ``name`` in the sandbox's kernel; see the module docstring."""

    def __init__(self, box: Sandbox, name: str, timeout: float):
        self.box, self.name, self.timeout = box, name, timeout
        self.__name__ = self.__qualname__ = name

    def __repr__(self) -> str:
        return f"<the submission's {self.name}>"

    def _ask(self, payload: dict, values: dict, what: str) -> tuple[dict, dict]:
        text = self.box.request(pack(payload, values), self.timeout, what)
        try:
            msg, out = unpack(text)
        except WireError as exc:
            raise SandboxStop(f"the kernel's answer while {what} is not valid: {exc}") from None
        if "raised" in msg:
            raise _exception(msg["raised"], self.box.memory_gb)
        return msg, out

    def lookup(self) -> tuple[bool, str]:
        """(whether the kernel has a callable of this name, the type of what it has)."""
        msg, out = self._ask({"op": "lookup", "fn": self.name}, {},
                             f"looking for {self.name}")
        return msg.get("callable") is True, str(out.get("type", ""))

    def __call__(self, *args, **kwargs):
        msg, out = self._ask({"op": "call", "fn": self.name},
                             {"args": list(args), "kwargs": kwargs},
                             f"running {self.name} on the grader's inputs")
        torch = sys.modules.get("torch")
        changed = out.get("changed")
        for key, new in (changed.items() if isinstance(changed, dict) else ()):
            i = int(key) if key.isdigit() else -1
            if (0 <= i < len(args) and torch is not None and isinstance(args[i], torch.Tensor)
                    and isinstance(new, torch.Tensor) and new.shape == args[i].shape):
                with torch.no_grad():
                    args[i].copy_(new)
        result = out.get("result")
        grad_id = msg.get("grad_id")
        if torch is not None and isinstance(result, torch.Tensor) and result.requires_grad:
            result = result.detach()
            leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if isinstance(grad_id, int) and leaves:
                result = _bridge(torch).apply(result, self, grad_id, *leaves)
        return result

    def backward(self, grad_id: int, grad, n: int) -> list:
        """The gradients of the ``n`` inputs of call ``grad_id``, given the output's gradient.

        Raises:
            RuntimeError: the backward pass failed in the kernel (the check reports it).
        """
        try:
            _, out = self._ask({"op": "backward", "grad_id": grad_id}, {"grad": grad},
                               f"computing the gradient through {self.name}")
        except Exception as exc:  # SandboxStop (a BaseException) passes
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        grads = out.get("grads")
        if not (isinstance(grads, list) and len(grads) == n):
            raise SandboxStop(f"the kernel's gradients of {self.name} are not valid")
        return grads


_BRIDGE = None


def _bridge(torch):
    """An autograd Function whose forward is the kernel's result and backward asks the kernel."""
    global _BRIDGE
    if _BRIDGE is None:

        class _KernelCall(torch.autograd.Function):
            @staticmethod
            def forward(ctx, value, remote, grad_id, *leaves):
                ctx.remote, ctx.grad_id, ctx.n = remote, grad_id, len(leaves)
                ctx.shapes = [(x.shape, x.dtype) for x in leaves]
                return value.clone()

            @staticmethod
            def backward(ctx, grad):
                grads = ctx.remote.backward(ctx.grad_id, grad, ctx.n)
                fixed = []
                for g, (shape, dtype) in zip(grads, ctx.shapes, strict=True):
                    ok = isinstance(g, torch.Tensor) and g.shape == shape
                    fixed.append(g.to(dtype) if ok else None)
                return (None, None, None, *fixed)

        _BRIDGE = _KernelCall
    return _BRIDGE
