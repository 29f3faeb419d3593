"""An item as text: the plain-text question (the notebook fallback and the terminal), its
worked solution, and the few HTML pieces the widgets show.

The plain text is deterministic and never shows the answer, so a notebook's stored output
(and a test that compares it) does not change between runs.

Imports: labkit.quiz.bank.
"""

from __future__ import annotations

import html

from labkit.quiz.bank import Item


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


def item_text(item: Item, number: int | None = None) -> str:
    """The question as plain text: deterministic and without the answer."""
    head = f"{number}. " if number is not None else ""
    lines = [f"{head}[{item.topic} | {item.kind} | {item.difficulty}] {item.prompt}"]
    if item.code:
        lines += ["", _indent(item.code), ""]
    for i, ch in enumerate(item.options() if item.choices else []):
        lines.append(f"  {i + 1}) {ch.text}")
    if item.kind == "code_output":
        lines.append("  (Type exactly what it prints.)")
    elif item.kind == "explain":
        lines.append("  (Answer in two to four whole sentences.)")
    elif item.kind == "recall":
        lines.append("  (Think of the answer, then reveal it.)")
    return "\n".join(lines)


def _footer(command: str) -> str:
    return (
        f"(Run this cell in JupyterLab to answer here, or in a terminal: "
        f"python -m labkit.quiz {command})"
    )


def solution_text(item: Item) -> str:
    lines = ["Solution:"] + [f"  {i + 1}. {s}" for i, s in enumerate(item.solution)]
    lines += [
        f"Answer: {item.answer}",
        f"Quick check: {item.quick_check}",
        "Common mistakes: " + "; ".join(item.mistakes),
    ]
    return "\n".join(lines)


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _html_prompt(item: Item) -> str:
    out = (
        f"<b>{html.escape(item.prompt)}</b> <small>({item.topic}, {item.kind.replace('_', '-')}, "
        f"{item.difficulty})</small>"
    )
    return out + (_pre(item.code) if item.code else "")
