"""``python -m labkit.quiz ...``: the terminal quiz (see :mod:`labkit.quiz.cli`).

Imports: labkit.quiz.cli.
"""

import sys

from labkit.quiz.cli import main

if __name__ == "__main__":
    sys.exit(main())
