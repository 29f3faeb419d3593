"""Deprecated: the explain scorer is now ``labkit/quiz/explain_scorer.py``; use its names
from :mod:`labkit.quiz` (``from labkit.quiz import score_explanation``).

Each old name still works and warns, naming its replacement. Imports: labkit._api only.
"""

from labkit._api import lazy_exports

_OLD = ("MIN_WORDS", "words", "ExplainResult", "score_explanation")
_DEPRECATED = {name: f"labkit.quiz.{name}" for name in _OLD}
__getattr__, __dir__, __all__ = lazy_exports(__name__, {}, _DEPRECATED)
