# `make demo` and `make test` are all a newcomer needs: each creates the virtualenv on first use.
# torch is installed first, pinned to 2.13.0 (the CPU build on these machines; a GPU cluster installs its own
# CUDA build of 2.13 before `make install`), and every other package is held to constraints.txt so that no
# dependency can pull a different torch.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: install demo pretrained test lint unit clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch; assert not torch.version.cuda or '$(ALLOW_CUDA_TORCH)', 'a CUDA torch was installed'"
	touch $@

install: $(STAMP)

# The embedded study: the tiny base model shipped in recipes/tiny_cpu/pretrained, the five strategies fine-tuned
# from it (ZeRO-3, CP=2 on two gloo ranks), each converted to HF and evaluated; one report. DEMO_FAST=1: base +
# AO + ID, the small suite, in runs/fast/. DEMO_PRETRAIN=1: pretrain the base model afresh first (~25 min).
# Rerunning skips finished stages. The recipes and overrides live in lcrecipes/commands/demo.py
# (`lcr demo [--fast] [--pretrain]`), shared with the end-to-end test.
demo: $(STAMP)
	$(VENV)/bin/lcr demo $(if $(filter 1,$(DEMO_FAST)),--fast) $(if $(filter 1,$(DEMO_PRETRAIN)),--pretrain)

# Remake the shipped base model: pretrain_1 then pretrain_2 under runs/, then copy the HF export (weights,
# tokenizer, config) over recipes/tiny_cpu/pretrained.
pretrained: $(STAMP)
	$(VENV)/bin/lcr run recipes/tiny_cpu/pretrain_1.yaml recipes/tiny_cpu/pretrain_2.yaml
	rm -rf recipes/tiny_cpu/pretrained && cp -r runs/tiny_cpu/pretrain_2/hf recipes/tiny_cpu/pretrained
	rm -f recipes/tiny_cpu/pretrained/lcr_source.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest -m "not distributed and not slow and not slurm" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
