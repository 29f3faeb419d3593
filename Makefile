# Two commands do everything on a fresh machine:
#   make lab    create the environment if missing, then open the course in JupyterLab
#   make test   create the environment if missing, then run every test
# Both install into .venv with the exact pins of constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.labkit-installed
LAB_ARGS ?=
# The folder JupyterLab serves: the learner's workspace, a git-ignored copy of the lessons made
# from their student versions on first run (tests point it at a temporary copy instead).
COURSE_DIR ?= workspace
# Jupyter refuses to run as root unless told; containers and Colab often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_ARGS ?=

# Tests and lessons never reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning makes
# torch 10x slower (350 ms vs 29 ms a training step, measured here).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup lab test lint execute clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null || { \
	  echo "labkit needs Python >= 3.10 (found: $$($(PYTHON) --version 2>&1)). Install Python 3.11 and run 'make PYTHON=python3.11 ...', or use the conda route in README.md."; \
	  exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[test]"
	@touch $(STAMP)

lab: setup
	@if [ "$(COURSE_DIR)" = "workspace" ]; then $(BIN)/python -m labkit.classroom workspace --dir workspace; fi
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=$(COURSE_DIR) $(LAB_ARGS) $(COURSE_DIR)/00_welcome.ipynb

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check labkit tests benchmarks scripts lessons

# Re-run a lesson in place with the committed executor: make execute NB=lessons/00_welcome.ipynb
execute: setup
	$(BIN)/python scripts/run_notebook.py $(NB)

clean-venv:
	rm -rf $(VENV)
