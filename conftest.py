"""Root pytest configuration: never collect the learner's workspace (a git-ignored copy of
the lessons that `make lab` creates), even when someone runs a bare `pytest .`."""

collect_ignore = ["workspace", "build", "test-output"]
