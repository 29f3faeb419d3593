"""``python -m labkit.classroom ...``: runs :func:`labkit.classroom.cli.main`."""

import sys

from labkit.classroom.cli import main

if __name__ == "__main__":
    sys.exit(main())
