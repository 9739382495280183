# collect -> reward -> fine-tune, on the shapes world by default.  `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first.  The default is the CPU wheel this platform has on disk;
# elsewhere pick a CUDA build (>= 2.6, pyproject's floor), e.g.
#   make install TORCH_SPEC="torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124"
# A TORCH_SPEC given on the command line or in the environment that differs from the one .venv was
# built with re-installs torch (the spec is kept in $(TORCH_STAMP)); the default never replaces one.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-spec
# pip prints a warning per unreachable local index folder of this platform's pip.conf; -qq keeps
# real errors only.
PIP := $(PY) -m pip -qq
PYTEST_ARGS ?=
# make test-fast's pytest-xdist workers (one a core; each test file stays on one worker, so its
# module fixtures are built once); 0 runs in this process
TEST_WORKERS ?= auto

.DEFAULT_GOAL := help
.PHONY: demo loop help install test test-fast oracle-check finetune finetune-multi eval bench clean clean-datasets base results-page probe-steps FORCE

demo: install  ## the whole loop on the shapes world -> reports/demo/ (10-25 min on 2 CPU cores, by the machine)
	$(PY) -m pipelines.demo $(ARGS)

loop: install  ## the closed loop: R rounds of label -> reward -> DPOK from the last round's model -> reports/loop/ (resumes)
	$(PY) -m pipelines.loop $(ARGS)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

install: $(STAMP)  ## create .venv and install the project with its test tools

# Rewritten (so newer than $(STAMP)) only when torch is (re)installed: a new .venv, or a TORCH_SPEC
# given explicitly that differs from the stamped one.  A .venv made before the stamp existed gets
# one that matches no spec, so only an explicit TORCH_SPEC re-installs there.
$(TORCH_STAMP): FORCE
	@if [ ! -x $(PY) ]; then echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	@if [ ! -f $@ ] && [ -f $(STAMP) ]; then echo "(installed before the torch spec was stamped)" > $@; touch -r $(STAMP) $@; fi
	@if [ ! -f $@ ] || { [ "$(origin TORCH_SPEC)" != file ] && [ "$$(cat $@)" != '$(TORCH_SPEC)' ]; }; then \
	  echo "installing $(TORCH_SPEC)"; \
	  $(PIP) install $$([ -f $@ ] && echo --force-reinstall) $(TORCH_SPEC) && echo '$(TORCH_SPEC)' > $@; \
	fi

$(STAMP): pyproject.toml $(TORCH_STAMP)
	@echo "installing the project into $(VENV) (about a minute)"
	$(PIP) install -e ".[dev]"
	@touch $(STAMP)

FORCE:

test: install  ## check the package layers (lint-imports), then run the test suite (CPU; GPU tests skip without CUDA)
	$(VENV)/bin/lint-imports
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: install  ## the layers and every test not marked slow (a few minutes; `make test` runs them all)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

oracle-check: install  ## measure the shapes-world oracle: renders, hue sweep, VAE round trips, agreement (last line: JSON)
	$(PY) -m pipelines.oracle_check $(ARGS)

# --- base models (shapes world) -------------------------------------------------------------
# Trains tokenizer, tiny CLIP, VAE and UNet into runs/base/ (never into shapes/models/ unless asked:
# make base ARGS="out_dir=shapes/models overwrite=true").
base: install  ## train + evaluate the shapes-world CLIP and SD models into runs/base/ (<= 90 min, 2 CPU cores)
	$(PY) -m pipelines.base $(ARGS)

# --- labeling round: generate -> label (people or simulated raters) -> export -------------------
# Extra settings go in ARGS as key=value, e.g. make label ARGS="server.port=8080 overlap=2".
ARGS ?=
RATERS_FILE ?= datasets/raters.json
.PHONY: migrate generate import label simulate-raters loadtest-label rater-add rater-passwd rater-disable rater-enable raters label-export targets

generate: install  ## sample images per prompt into a round (ARGS="pipeline=DIR|RUN round=0 per_prompt=4"; source=renderer: no model)
	$(PY) -m pipelines.generate $(ARGS)

import: install  ## images made elsewhere into a round (ARGS="src=<folder with metadata.jsonl|csv, or a listing> root=...")
	$(PY) -m pipelines.import_images $(ARGS)

label: install  ## serve the labeling app (ARGS="root=... server.host=0.0.0.0 server.port=7860 overlap=3")
	$(PY) -m pipelines.label raters_file=$(RATERS_FILE) $(ARGS)

simulate-raters: install  ## simulated raters label the round through the app's assignment code (last line: JSON)
	$(PY) -m pipelines.simulate_raters $(ARGS)

loadtest-label: install  ## >= 20 concurrent raters x 50 labels against a live app (last line: JSON)
	$(PY) -m pipelines.loadtest_label $(ARGS)

rater-add: install  ## add a rater: make rater-add RATER=alice [ADMIN=1] [PASSWORD_FILE=f] (else asks, or reads stdin)
	@test -n "$(RATER)" || { echo "error: set RATER=<id>"; exit 2; }
	$(PY) -m pipelines.raters --file $(RATERS_FILE) add $(RATER) $(if $(ADMIN),--admin,) $(if $(PASSWORD_FILE),--password-file "$(PASSWORD_FILE)",)

rater-disable: install  ## stop a rater signing in (takes effect at their next click): make rater-disable RATER=alice
	@test -n "$(RATER)" || { echo "error: set RATER=<id>"; exit 2; }
	$(PY) -m pipelines.raters --file $(RATERS_FILE) disable $(RATER)

rater-enable: install  ## let a disabled rater sign in again: make rater-enable RATER=alice
	@test -n "$(RATER)" || { echo "error: set RATER=<id>"; exit 2; }
	$(PY) -m pipelines.raters --file $(RATERS_FILE) enable $(RATER)

rater-passwd: install  ## set a rater's new password: make rater-passwd RATER=alice [PASSWORD_FILE=f] (else asks, or reads stdin)
	@test -n "$(RATER)" || { echo "error: set RATER=<id>"; exit 2; }
	$(PY) -m pipelines.raters --file $(RATERS_FILE) passwd $(RATER) $(if $(PASSWORD_FILE),--password-file "$(PASSWORD_FILE)",)

raters: install  ## list the raters (admin / disabled flags)
	$(PY) -m pipelines.raters --file $(RATERS_FILE) list

label-export: install  ## export the round's current labels to <root>/exports/<time>/ (ARGS="root=... format=hf")
	$(PY) -m pipelines.label_export $(ARGS)

migrate: install  ## rewrite a dataset root's tables in the current schema version (ARGS="root=...")
	$(PY) -m pipelines.migrate $(ARGS)

targets: install  ## prompts to fine-tune on, from the round's labels -> <root>/targets.txt (ARGS="root=...")
	$(PY) -m pipelines.targets $(ARGS)

# --- fine-tuning, evaluation, benchmark ------------------------------------------------------
# METHOD=dpok|rwl|draft|dpo|kto; CONFIG=file.yaml replaces finetune/configs/$(METHOD).yaml; ARGS="key.sub=value ..."
METHOD ?= dpok
CONFIG ?=
LAUNCH_ARGS ?=
finetune: install  ## fine-tune against the reward (dpo, kto: the labels): METHOD=dpok|rwl|draft|dpo|kto [CONFIG=f.yaml] [ARGS="k=v"]
	$(PY) -m pipelines.finetune $(if $(CONFIG),--config $(CONFIG)) method=$(METHOD) $(ARGS)

finetune-multi: install  ## the same on several GPUs: accelerate launch [LAUNCH_ARGS="--num_processes 4"] with METHOD, CONFIG, ARGS
	$(VENV)/bin/accelerate launch $(LAUNCH_ARGS) -m pipelines.finetune $(if $(CONFIG),--config $(CONFIG)) method=$(METHOD) $(ARGS)

probe-steps: install  ## which denoising steps decide the reward (DPOK's window and tail) -> reports/probe/
	$(PY) -m pipelines.probe_steps $(ARGS)

eval: install  ## base vs fine-tuned models on the same prompts and seeds (ARGS="prompts_file=F base=DIR models=[name=RUN]") -> reports/eval/
	$(PY) -m pipelines.evaluate $(ARGS)

bench: install  ## DPOK/RWL loop speed vs. bare passes -> reports/bench/ (CUDA config when a GPU is present; ARGS="demo=true": the demo stage by stage, eager vs compiled)
	$(PY) -m pipelines.bench $(ARGS)

results-page: install  ## regenerate experiments/results.md (and README's demo block) from the records in experiments/
	$(PY) -m pipelines.results_page $(ARGS)

# ---- reward stage (reward/) ------------------------------------------------------------------
# Extra settings as key=value, e.g. make reward ARGS="data.root=datasets/mine overwrite=true"
.PHONY: reward reward-check round-check score-rewards reward-bench select

reward: install  ## train the reward model on the current labels (datasets/shapes -> runs/reward/)
	$(PY) -m pipelines.train_reward $(ARGS)

select: install  ## which of a round's images go to raters next (ARGS="root=... round=N budget=64 method=uncertain|mix|random|all reward=runs/reward"; last line: JSON)
	$(PY) -m pipelines.select $(ARGS)

reward-check: install  ## does a reward keep up with a newer round? its AUC on that round's labels vs its own validation (ARGS="reward=runs/r0/reward root=... round=1"; last line: JSON)
	$(PY) -m pipelines.reward_check $(ARGS)

round-check: install  ## did round N pay? its raters' good-rate on its random share vs the round before's on the same prompts, each ± se; fell back: fine-tune from the best model (ARGS="root=... round=2"; last line: JSON)
	$(PY) -m pipelines.round_check $(ARGS)

score-rewards: install  ## write reward scores of a generations table (runs/reward) to its rewards table
	$(PY) -m pipelines.score_rewards $(ARGS)

reward-bench: install  ## reward targets on a simulated round (renders + raters at 10 % noise)
	$(PY) -m pipelines.reward_bench $(ARGS)

clean:  ## remove runs/ and reports/ (what the stages can make again); keeps datasets/ (people's labels, rater accounts) and .venv
	rm -rf runs reports .pytest_cache

# datasets/ holds what people made: labels, rankings, rater accounts (raters.json).  Deleting it is
# its own target and asks first; CONFIRM=datasets answers for a script.
clean-datasets:  ## delete datasets/ (every label and the rater accounts): asks first, or CONFIRM=datasets
	@if [ "$(CONFIRM)" != datasets ]; then \
	  read -r -p "delete datasets/ with every label, ranking and rater account? type 'datasets' to confirm: " answer; \
	  [ "$$answer" = datasets ] || { echo "kept datasets/"; exit 1; }; \
	fi
	rm -rf datasets
