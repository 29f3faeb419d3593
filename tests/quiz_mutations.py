"""Random mutations for the quiz's fuzz tests (test_quiz_bank_reliability.py and
test_quiz_progress_reliability.py): one value of a parsed file replaced or deleted, or a few
bytes of the file changed. Seeded by the caller's ``random.Random``."""

from __future__ import annotations

import copy


def mutate_tree(rng, data, values):
    """A copy of ``data`` (dicts and lists) with one value somewhere replaced by one of
    ``values`` or, in a dict, deleted; the whole of ``data`` when it is empty."""
    data = copy.deepcopy(data)
    node, key = data, None
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if not isinstance(child, (dict, list)) or rng.random() < 0.25:
            break
        node = child
    if key is None:
        return rng.choice(values)
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = rng.choice(values)
    return data


def mutate_bytes(rng, raw: bytes, alphabet: bytes, insertions: list[bytes]) -> bytes:
    """``raw`` after one to four edits: a byte replaced by one of ``alphabet``, a run of
    bytes deleted, a line repeated (keys, ids, indentation), one of ``insertions`` inserted,
    or the end cut off."""
    raw = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        if not raw:
            break
        at = rng.randrange(len(raw))
        how = rng.randrange(5)
        if how == 0:
            raw[at] = rng.choice(alphabet)
        elif how == 1:
            del raw[at: at + rng.randint(1, 30)]
        elif how == 2:
            start, end = raw.rfind(b"\n", 0, at) + 1, raw.find(b"\n", at)
            raw[start:start] = raw[start: end + 1 if end >= 0 else len(raw)]
        elif how == 3:
            raw[at:at] = rng.choice(insertions)
        else:
            del raw[at:]
    return bytes(raw)
