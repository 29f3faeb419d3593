"""Start the course's JupyterLab the way a learner does (`make lab`), for tests.

The server runs headless on a free port with a token, serves ``course_dir`` (a temporary copy
of the lessons, so autosave never rewrites a committed notebook), and keeps every Jupyter
directory, and the quiz progress file, under ``state_dir``. It runs in its own process group,
so stopping it also stops `make`, JupyterLab and the kernels it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running `make lab`: ``url`` ends without a slash; ``progress`` is $LABKIT_PROGRESS."""

    proc: subprocess.Popen
    port: int
    token: str
    course_dir: Path
    progress: Path
    log: Path
    output: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET"):
        """Call the REST API with the token; returns (status, parsed JSON or text)."""
        req = urllib.request.Request(
            f"{self.url}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read().decode()
            try:
                return resp.status, json.loads(body) if body else None
            except json.JSONDecodeError:
                return resp.status, body

    def shutdown_kernels(self) -> None:
        """Stop every kernel, so one notebook's kernel does not slow the next one down."""
        _, sessions = self.api("sessions")
        for s in sessions:
            self.api(f"sessions/{s['id']}", method="DELETE")

    def stop(self) -> str:
        """Stop the whole process group; returns what the server printed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.output = self.log.read_text(errors="replace")
        return self.output

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_lab(
    course_dir: Path,
    state_dir: Path,
    *,
    token: str = "labkit-test-token",
    user_settings: dict[str, dict] | None = None,
    timeout: float = 120,
) -> LabServer:
    """Run `make lab` on ``course_dir`` and wait until its API answers 200.

    Args:
        course_dir: the folder served (make's ``COURSE_DIR``).
        state_dir: holds the Jupyter runtime, config, data and workspace dirs, the IPython dir
            and the quiz progress file, so nothing touches the user's own.
        user_settings: JupyterLab user settings, ``{"@jupyterlab/plugin:id": {...}}``,
            written to the private config dir before the server starts.
        timeout: seconds to wait for the API.

    Raises:
        RuntimeError: the server exited or did not answer in time (with its output).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = (
        f"--no-browser --port={port} --ip=127.0.0.1 --IdentityProvider.token={token} "
        f"--ServerApp.open_browser=False"
    )
    cfg = state_dir / "cfg"
    for plugin, values in (user_settings or {}).items():
        package, _, name = plugin.partition(":")
        path = cfg / "lab" / "user-settings" / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    progress = state_dir / "progress.json"
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(state_dir / "rt"),
        JUPYTER_CONFIG_DIR=str(cfg),
        JUPYTER_DATA_DIR=str(state_dir / "data"),  # notebook-signing key and trust database
        IPYTHONDIR=str(state_dir / "ipython"),  # the kernels' history and profile
        JUPYTERLAB_WORKSPACES_DIR=str(state_dir / "ws"),
        LABKIT_PROGRESS=str(progress),
    )
    # The log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server.
    log = state_dir / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["make", "-s", "lab", f"LAB_ARGS={args}", f"COURSE_DIR={course_dir}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LabServer(proc, port, token, Path(course_dir), progress, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status, _ = server.api("contents")
            if status == 200:
                return server
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    code = proc.poll()
    out = server.stop()
    raise RuntimeError(
        f"JupyterLab did not answer within {timeout:.0f} s (exit code {code}):\n{out[-3000:]}"
    )
