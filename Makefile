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
.PHONY: help install test oracle-check finetune eval bench clean

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

# METHOD=dpok|rwl; CONFIG=file.yaml replaces finetune/configs/$(METHOD).yaml; ARGS="key.sub=value ..."
METHOD ?= dpok
CONFIG ?=
ARGS ?=
finetune: install  ## fine-tune against the reward model: METHOD=dpok|rwl [CONFIG=f.yaml] [ARGS="k=v"]
	$(PY) -m pipelines.finetune $(if $(CONFIG),--config $(CONFIG)) method=$(METHOD) $(ARGS)

eval: install  ## base vs fine-tuned models on held-out prompts -> reports/eval/ [ARGS="k=v"]
	$(PY) -m pipelines.evaluate $(ARGS)

bench: install  ## DPOK/RWL loop speed vs. bare passes -> reports/bench/ (CUDA config when a GPU is present)
	$(PY) -m pipelines.bench $(ARGS)

clean:  ## remove generated outputs (datasets/, runs/, reports/), keep .venv
	rm -rf datasets runs reports .pytest_cache
