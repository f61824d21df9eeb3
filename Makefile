# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build that these machines carry; on a GPU host use e.g. TORCH_SPEC='torch' and
# EXTRAS=server,gpu,export,bench,client,dev,peers (gpu instead of cpu: one onnxruntime).
TORCH_SPEC ?= torch==2.13.0
# all: every role on one CPU machine (pyproject.toml); peers: the runtimes `aigc bench`
# compares with (wheels); llama.cpp's is `make install-llamacpp`
EXTRAS ?= all,dev,peers
STAMP := $(VENV)/.installed

.PHONY: install external-tools install-llamacpp demo test test-fast lint bench bench-quick results docs lock clean

# constraints.txt pins every version (the environment the suite last passed in); on a GPU host
# CONSTRAINTS= leaves them free.
CONSTRAINTS ?= -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# Refresh constraints.txt from this venv (after `make install` and a green `make test`).
lock: $(STAMP)
	@{ echo "# The versions CI, make install and the serving image install (pip install -c constraints.txt):"; \
	  echo "# the environment the suite last passed in. Refresh with \`make lock\` in a venv from \`make install\`."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^-e' -e ' @ ' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt

install: $(STAMP)

# The OpenAI clients the live tests run against the frontend (lm-evaluation-harness,
# AIPerf), each in a venv of its own under .venv-tools: they need numpy 2 and transformers 5,
# the server numpy < 2. Versions pinned in tests/external/<tool>.txt.
TOOLS ?= .venv-tools
EXTERNAL := $(TOOLS)/lm-eval/.installed $(TOOLS)/aiperf/.installed

$(TOOLS)/%/.installed: tests/external/%.txt
	@test -x $(TOOLS)/$*/bin/python || $(PYTHON) -m venv $(TOOLS)/$*
	$(TOOLS)/$*/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/$*/bin/python -m pip install -q -r tests/external/$*.txt
	@touch $@

external-tools: $(EXTERNAL)

# llama-cpp-python, the llama.cpp peer of `aigc bench`, built from source (15+ minutes on 2 cores)
# for this CPU's vector units but without -march=native: its AMX matmul crashed on GPT-2's
# q8_0 / q4_0 (on a Xeon with AMX). AVX-512 kernels where the CPU has them.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(if $(findstring avx512f,$(CPU_FLAGS)),-DGGML_AVX512=ON) \
	$(if $(findstring avx512_vnni,$(CPU_FLAGS)),-DGGML_AVX512_VNNI=ON) \
	$(if $(findstring avx512_bf16,$(CPU_FLAGS)),-DGGML_AVX512_BF16=ON)

install-llamacpp: $(STAMP)
	CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS))" $(BIN)/python -m pip install -q -e ".[llamacpp]"

demo: $(STAMP)
	$(BIN)/aigc doctor
	$(BIN)/aigc demo

# AIGC_EXTERNAL_TOOLS: the live tests of those clients fail, not skip, where one is missing.
test: $(STAMP) $(EXTERNAL)
	AIGC_EXTERNAL_TOOLS=$(TOOLS) $(BIN)/python -m pytest -q

# The unit tests on TEST_WORKERS pytest-xdist workers, whole files per worker (their
# module fixtures are made once).
TEST_WORKERS ?= 2
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not server and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/aigc bench

bench-quick: $(STAMP)
	$(BIN)/aigc bench --quick --gate --out benchmarks/results

results: $(STAMP)
	$(BIN)/aigc results --write-readme

# The generated tables of docs/: the export results (from the demo's reports) and the
# benchmark section (a full bench run writes it).
docs: $(STAMP)
	$(BIN)/aigc results --write-readme docs/EXPORT.md
	$(BIN)/aigc bench --write-readme docs/BENCHMARKS.md --out benchmarks/results

clean:
	rm -rf runs/ model_repository.staging/ .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
