"""The kernel a submission runs in: its own folder, process group, time and memory limits.

:class:`Sandbox` is a context manager around one Jupyter kernel for one submission:

* its working directory is a fresh temporary folder holding a copy of that notebook only
  (a submission that deletes the files around it deletes nothing of anyone else's), and the
  folder is removed afterwards;
* the kernel leads its own process group (``start_new_session``), and the whole group is
  killed with SIGKILL when the sandbox closes, so a process the submission started in the
  background does not outlive the check;
* each cell, and each call the grader makes, has a timeout (then the kernel is interrupted),
  and the submission as a whole has a wall-clock limit;
* the kernel's address space is capped (``RLIMIT_AS`` set before it starts): an allocation
  past the limit raises ``MemoryError`` inside the kernel instead of taking the machine down.
  The kernel sees no GPU (``CUDA_VISIBLE_DEVICES`` is empty), because CUDA reserves far more
  address space than any such limit, and a check must not depend on the machine;
* its environment marks it as a check kernel (``LABKIT_CHECK_KERNEL=1``: labkit then refuses
  to read the lessons and their solutions), sends quiz answers to a throwaway progress file
  and keeps Hugging Face offline.

None of this is a security boundary: the kernel runs as the grader's user and can read and
write what that user can (INSTRUCTORS.md says what to use against a determined attacker).

:meth:`Sandbox.run_cell` runs a cell and says how it ended; :meth:`Sandbox.request` sends one
``labkit.classroom.wire`` request and returns the reply's text.

Imports: ``jupyter_client`` (when a sandbox starts), ``labkit.classroom.student`` (the
marker's name) and the standard library.
"""

from __future__ import annotations

import ast
import contextlib
import os
import queue
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.classroom.student import CHECK_KERNEL_ENV

#: The folder that holds the ``labkit`` package the grader runs (the kernel imports the same).
_LABKIT_PARENT = str(Path(__file__).resolve().parent.parent.parent)


class SandboxStop(BaseException):
    """The kernel stopped answering: it died, or ran past a time limit. The message says which.

    A BaseException, so that a check's ``except Exception`` (which reports the learner's own
    errors) lets it through to the grader.
    """


@dataclass(frozen=True)
class Outcome:
    """How one cell ended: ``ok``, ``error`` (with ename and evalue), ``timeout`` (the cell's
    limit), ``total`` (the submission's limit) or ``died`` (the kernel is gone)."""

    status: str
    ename: str = ""
    evalue: str = ""


def out_of_memory(memory_gb: float) -> str:
    """What a row says when the submission hit the kernel's memory limit."""
    return (f"ran out of memory (the check kernel may use {memory_gb:g} GB of address space; "
            "--memory-limit sets it)")


def _limit_memory(nbytes: int) -> None:
    """Run in the kernel's process just before it starts: cap its address space, no cores."""
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Sandbox:
    """One kernel for one submission; see the module docstring. Use it as ``with Sandbox(...)``.

    Args:
        notebook: the submission (copied, alone, into the kernel's temporary folder).
        memory_gb: the kernel's address-space limit in GB (10**9 bytes).
        total_timeout: seconds for the whole submission, cells and grading calls together.
    """

    def __init__(self, notebook: Path, memory_gb: float, total_timeout: float):
        self.notebook, self.memory_gb, self.total_timeout = notebook, memory_gb, total_timeout
        self.alive = False
        self._tmp = self._km = self._kc = self._pgid = None

    # -------------------------------------------------------------------------- life cycle

    def __enter__(self) -> Sandbox:
        from jupyter_client.manager import KernelManager  # only when a submission runs

        self._tmp = tempfile.TemporaryDirectory(prefix="labkit-check-")
        folder = Path(self._tmp.name)
        try:
            shutil.copyfile(self.notebook, folder / self.notebook.name)
            env = dict(os.environ)
            env.update({
                CHECK_KERNEL_ENV: "1",
                "LABKIT_PROGRESS": str(folder / ".progress.json"),
                "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (_LABKIT_PARENT, os.environ.get("PYTHONPATH")) if p),
            })
            env.setdefault("MALLOC_ARENA_MAX", "4")  # fewer 64 MB arenas: less address space
            env.setdefault("HF_HUB_OFFLINE", "1")
            env.setdefault("TRANSFORMERS_OFFLINE", "1")
            self._km = KernelManager(kernel_name="python3")
            nbytes = int(self.memory_gb * 1e9)
            self._km.start_kernel(
                cwd=str(folder), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=lambda: _limit_memory(nbytes),
            )
            self._pgid = self._km.provisioner.pid  # a new session: its group id is its pid
            self._kc = self._km.client()
            self._kc.start_channels()
            try:
                self._kc.wait_for_ready(timeout=60)
            except RuntimeError as exc:
                raise SandboxStop(f"the kernel did not start ({exc}); is --memory-limit "
                                  f"{self.memory_gb:g} GB too small for it?") from None
            self._deadline = time.monotonic() + self.total_timeout  # from a started kernel
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.alive = True
        return self

    def __exit__(self, *exc) -> None:
        self.alive = False
        if self._kc is not None:
            with contextlib.suppress(Exception):
                self._kc.stop_channels()
        if self._km is not None:
            try:
                self._km.shutdown_kernel(now=True)
            except Exception:  # already gone; the group is killed below regardless
                pass
        if self._pgid is not None:
            try:  # everything the kernel started in its group, background processes too
                os.killpg(self._pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._tmp is not None:
            self._tmp.cleanup()

    # -------------------------------------------------------------------------- running

    def time_left(self) -> float:
        """Seconds left of the submission's limit."""
        return self._deadline - time.monotonic()

    def _wait(self, msg_id: str, seconds: float) -> dict | str:
        """The reply to ``msg_id``, or ``"timeout"`` / ``"died"``."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                msg = self._kc.get_shell_msg(timeout=min(0.25, left))
            except queue.Empty:
                self._drain()
                if not self._km.is_alive():
                    self.alive = False
                    return "died"
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg["content"]

    def _drain(self) -> None:
        """Drop what the cells printed (the grader never reads it)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._kc.get_iopub_msg(timeout=0)

    def _stop(self, msg_id: str) -> None:
        """Interrupt a cell past its time; if the kernel does not come back, it is unusable."""
        try:
            self._km.interrupt_kernel()
        except Exception:
            self.alive = False
            return
        if not isinstance(self._wait(msg_id, 5.0), dict):
            self.alive = False

    def _execute(self, code: str, timeout: float, **kw) -> tuple[dict | str, bool]:
        """(reply content or "timeout"/"died", whether the submission's limit was the one)."""
        if not self.alive:
            return "died", False
        limit = min(timeout, self.time_left())
        if limit <= 0:
            return "timeout", True
        msg_id = self._kc.execute(code, allow_stdin=False, stop_on_error=False, **kw)
        reply = self._wait(msg_id, max(limit, 0.0))
        if reply == "timeout":
            self._stop(msg_id)
        return reply, limit < timeout

    def run_cell(self, source: str, timeout: float) -> Outcome:
        """Run one cell (errors allowed) within ``timeout`` seconds and the submission's limit."""
        reply, total = self._execute(source, timeout)
        if reply == "died":
            return Outcome("died")
        if reply == "timeout":
            return Outcome("total" if total else "timeout")
        if reply.get("status") == "error":
            return Outcome("error", str(reply.get("ename", "")), str(reply.get("evalue", "")))
        return Outcome("ok")

    def request(self, message: str, timeout: float, what: str) -> str:
        """Send a ``wire`` request; the reply's JSON text. ``what`` names it in errors
        ("running f on the grader's inputs").

        Raises:
            SandboxStop: the kernel died, or ``what`` ran past ``timeout`` or the
                submission's limit.
        """
        expr = f'__import__("labkit.classroom.wire", fromlist=["serve"]).serve({message!r})'
        reply, total = self._execute("", timeout, silent=True, store_history=False,
                                     user_expressions={"reply": expr})
        if reply == "died":
            raise SandboxStop(f"the kernel died while {what}")
        if reply == "timeout":
            limit = (f"the {self.total_timeout:g} s limit for the whole notebook" if total
                     else f"the {timeout:g} s timeout")
            raise SandboxStop(f"{what} took longer than {limit}")
        answer = reply.get("user_expressions", {}).get("reply", {})
        if answer.get("status") != "ok":
            why = f"{answer.get('ename', '?')}: {answer.get('evalue', '')}".strip(": ")
            raise SandboxStop(f"the kernel could not answer while {what} ({why})")
        try:
            text = ast.literal_eval(answer["data"]["text/plain"])
        except (KeyError, TypeError, ValueError, SyntaxError):
            text = None
        if not isinstance(text, str):
            raise SandboxStop(f"the kernel's answer could not be read while {what}")
        return text
