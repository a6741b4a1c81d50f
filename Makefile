# labkit: two commands do everything on a fresh clone.
#   make lab    create .venv if missing, then start JupyterLab on notebooks/ (localhost, token on)
#   make test   create .venv if missing, then run every test: unit tests and nbval over the notebooks
# Other useful targets: make doctor, make quick (unit tests without slow/multi-process ones),
# make course (run every notebook in full as a learner would), make student, make clean.
#
# TORCH selects the PyTorch build. The default, torch==2.13.0, is the CPU build.
#   NVIDIA GPU:  make lab TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   Apple Mac:   make lab            (PyPI's macOS wheels include MPS support)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PORT   ?= 8888
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
# Jupyter refuses to run as root unless told; containers and CI often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test quick doctor course student clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) --no-browser $(ROOT_FLAG)

test: $(STAMP)
	LABKIT_FAST=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env --durations=20

quick: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not dist and not browser" -q

doctor: $(STAMP)
	$(BIN)/labkit doctor

course: $(STAMP)
	$(BIN)/labkit course

student: $(STAMP)
	$(BIN)/labkit student

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
