"""The learner's progress: every checked attempt and every self-mark, in one JSON file that
several quizzes may write at once.

The file (version 2)::

    {"version": 2,
     "attempts": [{"id", "topic", "kind", "difficulty", "mode", "correct", "score", "time"}],
     "self_marks": [{"id": item id, "concept": concept name, "time": seconds since 1970}]}

A version-1 file (before self-marks: no ``self_marks``) is read as version 2 with none and
written as version 2 at its next save. A newer version is refused with a :class:`QuizError`
and left as it is, never overwritten.

**Several writers.** Two terminal quizzes, or two open lessons, may answer into one file at
the same moment. Every change (:meth:`Progress.record`, :meth:`~Progress.record_self_mark`,
:meth:`~Progress.reset`) holds an exclusive lock on ``<file>.lock`` (the ``filelock``
package: ``fcntl.flock`` on Linux and macOS, ``msvcrt.locking`` on Windows), re-reads the
file, changes it and rewrites it atomically (a temporary file in the same directory, fsync,
``os.replace``), so no writer's answers replace another's. Readers see a whole file, old or
new. The lock is the kernel's, so a quiz that crashes releases it; the empty ``.lock`` file
stays beside the progress file. A lock rather than an append-only log keeps the file one
readable JSON document that a reset or a topic reset rewrites like any other change.

Untested: CI runs Linux only. The lock on macOS (flock) and on Windows (msvcrt; there
``os.replace`` can also fail while another process has the file open), and on network file
systems (NFS, SMB), which may not honour flock, have not been tried.

**Unusable files.** A file that is not a version-1 or -2 progress file (not UTF-8, not JSON,
'attempts' not a list, an entry with a missing or wrongly-typed field) is set aside, renamed
to ``<name>.corrupt-<date>-<time>`` (never deleted), with a :class:`ProgressFileWarning`
saying where it went, and a fresh file is started. A directory, a path under a file, a
read-only file or a directory that cannot be written is a :class:`QuizError` naming the path
and the fix. After any error the file and the object are as they were.

Imports: labkit.quiz.bank, labkit.quiz.grading; filelock when a file is opened, platformdirs
only when no path is given.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import time
import warnings
from pathlib import Path

from labkit.quiz.bank import Item, QuizError
from labkit.quiz.grading import Feedback

VERSION = 2
LOCK_TIMEOUT = 30.0  # seconds to wait for another quiz's write (each takes milliseconds)
_ELSEWHERE = "use a file in a writable directory (--progress FILE or LABKIT_PROGRESS)"
_TEXT_FIELDS = ("id", "topic", "kind", "difficulty", "mode")


class ProgressFileWarning(UserWarning):
    """A progress file could not be used: it was set aside and a fresh one started."""


class _Corrupt(Exception):
    """The file's content is not a progress file (the message says why)."""


def progress_path(path: str | os.PathLike | None = None) -> Path:
    """Where progress is kept: ``path``, else ``$LABKIT_PROGRESS``, else the user data dir."""
    if path:
        return Path(path)
    if os.environ.get("LABKIT_PROGRESS"):
        return Path(os.environ["LABKIT_PROGRESS"])
    import platformdirs  # deferred: needed only when no path is given

    return Path(platformdirs.user_data_dir("labkit", appauthor=False)) / "quiz_progress.json"


def _empty() -> dict:
    return {"version": VERSION, "attempts": [], "self_marks": []}


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_entries(entries, name: str, checks: dict) -> None:
    if not isinstance(entries, list):
        raise _Corrupt(f"'{name}' is not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _Corrupt(f"{name}[{i}] is not an object")
        for key, (ok, what) in checks.items():
            if key not in entry:
                raise _Corrupt(f"{name}[{i}]: '{key}' is missing")
            if not ok(entry[key]):
                raise _Corrupt(f"{name}[{i}]: '{key}' must be {what}, got {entry[key]!r:.40}")


_ATTEMPT = {key: (_is_text, "non-empty text") for key in _TEXT_FIELDS}
_ATTEMPT.update(
    correct=(lambda v: isinstance(v, bool), "true or false"),
    score=(lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    time=(_is_number, "a time in seconds"),
)
_SELF_MARK = {"id": (_is_text, "non-empty text"), "concept": (_is_text, "non-empty text"),
              "time": (_is_number, "a time in seconds")}


def _parse(raw: bytes, where) -> dict:
    """A progress file's bytes as version-2 data.

    Raises:
        _Corrupt: the bytes are not a version-1 or -2 progress file (the message says why).
        QuizError: the file has a newer version than this labkit reads.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Corrupt(f"not valid UTF-8 at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise _Corrupt(f"not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise _Corrupt("not a JSON object")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _Corrupt(f"'version' must be a whole number from 1, got {version!r:.40}")
    if version > VERSION:
        raise QuizError(
            f"{where}: progress file version {str(version)[:40]} is newer than this labkit reads "
            f"(1-{VERSION}); upgrade labkit, or use another file (--progress FILE or "
            "LABKIT_PROGRESS); it was left as it is"
        )
    if "attempts" not in data:
        raise _Corrupt("'attempts' is missing")
    data.setdefault("self_marks", [])  # version 1 had none
    _check_entries(data["attempts"], "attempts", _ATTEMPT)
    _check_entries(data["self_marks"], "self_marks", _SELF_MARK)
    data["version"] = VERSION
    return data


class Progress:
    """Attempts and self-marks in a JSON file, changed under a lock and rewritten atomically.

    Args:
        path: the file; default ``$LABKIT_PROGRESS`` or the user data directory.
        read: read the file now (default); ``False`` starts empty in memory, and the next
            change reads the file first all the same.
    """

    VERSION = VERSION

    def __init__(self, path: str | os.PathLike | None = None, *, read: bool = True):
        self.path = progress_path(path)
        self.data = _empty()
        if read:
            with self._locked():
                self.data = self._load()

    @property
    def attempts(self) -> list[dict]:
        return self.data["attempts"]

    @property
    def self_marks(self) -> list[dict]:
        """The concepts of explain items that the learner marked as known, oldest first."""
        return self.data["self_marks"]

    # ----------------------------------------------------------------------- changes

    def record(self, item: Item, feedback: Feedback, mode: str = "practice") -> None:
        """Add one attempt and save (answers that were not checked are not recorded)."""
        if feedback.correct is None:
            return
        entry = {
            "id": item.id,
            "topic": item.topic,
            "kind": item.kind,
            "difficulty": item.difficulty,
            "mode": mode,
            "correct": feedback.correct,
            "score": round(feedback.score, 4),
            "time": round(time.time(), 3),
        }
        self._change(lambda data: data["attempts"].append(entry))

    def record_self_mark(self, item_id: str, concept: str) -> None:
        """Add the learner's mark that they know ``concept`` of explain item ``item_id``
        (each call adds one mark, with the time) and save."""
        for name, value in (("item_id", item_id), ("concept", concept)):
            if not _is_text(value):
                raise QuizError(
                    f"{self.path}: self-mark: '{name}' must be non-empty text, got {value!r}"
                )
        entry = {"id": item_id, "concept": concept, "time": round(time.time(), 3)}
        self._change(lambda data: data["self_marks"].append(entry))

    def reset(self, topic: str | None = None) -> None:
        """Forget every attempt and self-mark, or only the attempts of ``topic`` (self-marks
        name no topic, so they stay). A corrupt file is set aside first, as on reading."""

        def forget(data):
            if topic is None:
                data.update(attempts=[], self_marks=[])
            else:
                data["attempts"] = [a for a in data["attempts"] if a["topic"] != topic]

        self._change(forget)

    def save(self) -> None:
        """Write the data in memory as it is (under the lock); :meth:`record` and the others
        re-read the file first instead, which is what keeps other writers' changes."""
        with self._locked():
            self._write(self.data)

    # ---------------------------------------------------------------- file handling

    def _change(self, change) -> None:
        """Under the lock: read the file, apply ``change`` to its data, write it; the object
        takes the new data only once it is on disk."""
        with self._locked():
            data = self._load()
            change(data)
            self._write(data)
        self.data = data

    def _unusable(self, exc: OSError) -> QuizError:
        reason = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) != str(self.path):
            reason += f": {exc.filename}"
        return QuizError(f"{self.path}: cannot use this progress file ({reason}); {_ELSEWHERE}")

    def _check_path(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:  # e.g. a path under a file
            raise self._unusable(exc) from None
        if stat.S_ISDIR(mode):
            raise QuizError(
                f"{self.path}: this progress path is a directory; give a file, e.g. "
                f"--progress {self.path / 'quiz_progress.json'}"
            )
        if not stat.S_ISREG(mode):
            raise QuizError(f"{self.path}: this progress path is not a regular file; "
                            f"{_ELSEWHERE}")
        if not os.access(self.path, os.W_OK):
            raise QuizError(
                f"{self.path}: the progress file is read-only; make it writable (chmod u+w "
                f"{self.path}) or use another file (--progress FILE or LABKIT_PROGRESS)"
            )

    @contextlib.contextmanager
    def _locked(self):
        """Hold ``<file>.lock`` exclusively (other processes and other objects wait)."""
        self._check_path()
        import filelock  # deferred: `import labkit.quiz` stays light

        lock = filelock.FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except filelock.Timeout:
            raise QuizError(
                f"{self.path}: another quiz has held {lock.lock_file} for over "
                f"{LOCK_TIMEOUT:.0f} s; close it, or delete the lock file if none is running"
            ) from None
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            yield
        finally:
            lock.release()

    def _load(self) -> dict:
        """The file's data (under the lock): a missing file is empty; a corrupt one is set
        aside and replaced by empty data."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _empty()
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            return _parse(raw, self.path)
        except _Corrupt as exc:
            self._set_aside(str(exc))
            return _empty()

    def _set_aside(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        k = 1
        while aside.exists():  # never replace a file set aside before
            k += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{k}")
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            raise self._unusable(exc) from None
        warnings.warn(
            f"{self.path}: the progress file could not be used ({problem}); it was moved to "
            f"{aside} and a fresh one started",
            ProgressFileWarning,
            stacklevel=4,
        )

    def _write(self, data: dict) -> None:
        """Replace the file atomically: temp file in the same directory, fsync, rename."""
        text = json.dumps({**data, "version": VERSION}, indent=1)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quiz-progress-",
                                       suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise self._unusable(exc) from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    # ---------------------------------------------------------------------- reports

    def summary(self) -> dict[str, dict]:
        """Per topic: attempts, correct attempts, distinct items seen, mean of latest scores."""
        out: dict[str, dict] = {}
        latest: dict[tuple[str, str], dict] = {}
        for a in self.attempts:
            s = out.setdefault(a["topic"], {"attempts": 0, "correct": 0, "items": 0, "score": 0.0})
            s["attempts"] += 1
            s["correct"] += bool(a["correct"])
            latest[a["topic"], a["id"]] = a
        for a in latest.values():
            out[a["topic"]]["items"] += 1
            out[a["topic"]]["score"] += a["score"]
        for s in out.values():
            s["score"] = round(s["score"] / s["items"], 3)
        return dict(sorted(out.items()))

    def summary_text(self) -> str:
        rows = self.summary()
        if not rows:
            return f"No attempts yet ({self.path})."
        lines = [f"{'topic':<14} {'attempts':>8} {'correct':>8} {'items':>6} {'score':>6}"]
        for topic, s in rows.items():
            lines.append(
                f"{topic:<14} {s['attempts']:>8} {s['correct']:>8} {s['items']:>6} "
                f"{100 * s['score']:>5.0f}%"
            )
        return "\n".join(lines)
