# collect -> reward -> fine-tune, on the shapes world by default.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first.  The default is the CPU wheel this platform has on disk;
# elsewhere pick a CUDA build, e.g.
#   make install TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip prints a warning per unreachable local index folder of this platform's pip.conf; -qq keeps
# real errors only.
PIP := $(PY) -m pip -qq
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test oracle-check clean base

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

install: $(STAMP)  ## create .venv and install the project with its test tools

$(STAMP): pyproject.toml
	@echo "creating $(VENV) and installing $(TORCH_SPEC), then the project (about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[dev]"
	@touch $(STAMP)

test: install  ## run the test suite (CPU; GPU tests skip without CUDA)
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

oracle-check: install  ## measure the shapes-world oracle on >= 500 renders (last line: JSON)
	$(PY) -m pipelines.oracle_check

# --- base models (shapes world) -------------------------------------------------------------
# Trains tokenizer, tiny CLIP, VAE and UNet into runs/base/ (never into data/models/ unless asked:
# make base BASE_ARGS="out_dir=data/models overwrite=true").
BASE_ARGS ?=
base: install  ## train + evaluate the shapes-world CLIP and SD models into runs/base/ (<= 90 min, 2 CPU cores)
	$(PY) -m pipelines.base $(BASE_ARGS)

clean:  ## remove generated outputs (datasets/, runs/, reports/), keep .venv
	rm -rf datasets runs reports .pytest_cache
