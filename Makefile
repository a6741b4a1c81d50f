# labkit: two commands do everything on a fresh clone.
#   make lab    create .venv if missing, then start JupyterLab on notebooks/ (localhost, token on)
#   make test   create .venv if missing, then run every test: unit tests and nbval over the notebooks
# Other useful targets: make doctor, make quick (unit tests without slow/multi-process ones),
# make course (run every notebook in full as a learner would), make student, make clean.
#
# TORCH selects the PyTorch build. The default is plain `torch==2.13.0` from PyPI, which is:
#   Linux x86-64: the CUDA build (several GB, works on CPU too); for a laptop without an NVIDIA GPU
#                 the CPU-only build is ~10x smaller:
#                 make lab TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   NVIDIA GPU:   make lab TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   Apple Mac:    make lab   (PyPI's macOS wheels are CPU + MPS)
# CONSTRAINTS pins every other package to the versions CI passed with (on Python 3.11, the version it
# was tested on); `make lab CONSTRAINTS=` lets pip resolve pyproject.toml's lower bounds freely.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PORT   ?= 8888
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
HERE   := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CONSTRAINTS ?= $(if $(filter 3.11,$(PYVER)),$(HERE)constraints.txt)
# Jupyter refuses to run as root unless told; containers and CI often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test quick doctor course student clean env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) --no-browser $(ROOT_FLAG) \
		--LabApp.app_settings_dir=$(HERE)jupyter/settings

# Two pytest-xdist workers, each process on one thread (two workers at torch's default two threads on two
# cores spin against each other); --dist loadfile keeps a file on one worker: a notebook's cells share a kernel.
test: $(STAMP)
	LABKIT_FAST=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env \
		-n 2 --dist loadfile --durations=20

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
