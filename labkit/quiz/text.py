"""An item as text: the plain-text question (the notebook fallback and the terminal), its
worked solution, the few HTML pieces the widgets show, and text a terminal can print.

The plain text is deterministic and never shows the answer, so a notebook's stored output
(and a test that compares it) does not change between runs. :func:`printable` turns text
into what a terminal's encoding can print (an ASCII terminal gets ``x^2 <= 1`` for
``x² ≤ 1`` and ``?`` for an emoji), instead of an error.

Imports: labkit.quiz.bank.
"""

from __future__ import annotations

import html
import unicodedata

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


#: ASCII stand-ins for the symbols the bank uses (or may): maths, arrows, typography.
_ASCII = {
    "∝": "~", "≈": "~=", "≠": "!=", "≤": "<=", "≥": ">=", "×": "x", "·": "*", "÷": "/",
    "±": "+/-", "−": "-", "→": "->", "←": "<-", "⇒": "=>", "↔": "<->", "√": "sqrt",
    "∑": "sum", "∞": "inf", "²": "^2", "³": "^3", "¹": "^1", "½": "1/2", "¼": "1/4",
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "Δ": "Delta", "ε": "eps",
    "η": "eta", "θ": "theta", "λ": "lambda", "μ": "mu", "π": "pi", "σ": "sigma",
    "Σ": "Sum", "–": "-", "—": "--", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...",
    "•": "*", "°": " deg", "\u00a0": " ",
}


def printable(text: str, encoding: str | None) -> str:
    """``text`` as a terminal of ``encoding`` can print it: unchanged where it can, else each
    character it cannot print becomes its ASCII stand-in, its letter without accents, or
    ``?``. ``encoding`` None (a StringIO) or unknown: unchanged."""
    try:
        text.encode(encoding or "utf-8")
        return text
    except UnicodeEncodeError:
        pass
    except LookupError:
        return text

    def fits(piece: str) -> bool:
        try:
            piece.encode(encoding)
            return True
        except UnicodeEncodeError:
            return False

    out = []
    for ch in text:
        if not fits(ch):
            plain = "".join(c for c in unicodedata.normalize("NFKD", ch)
                            if not unicodedata.combining(c))
            ch = next((c for c in (_ASCII.get(ch), plain) if c and fits(c)), "?")
        out.append(ch)
    return "".join(out)
