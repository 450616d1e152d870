# pbg_fast: every entry point creates .venv if missing, installs what it needs, builds, runs.
#   make demo    set up, then run the main job on built-in data
#   make test    set up, then the whole test suite (CUDA compile check included)
#   make setup   environment + build only
#   make bench   the benchmarks (full size); QUICK=1 for the seconds-long versions
#   make cmake-check  the same C++ built by CMake, and its C++ chunk-step benchmark
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
export MAX_JOBS ?= 2
# Local builds target this machine's CPU (AVX-512 here: ~1.4x the chunk step of the portable
# x86-64 build). PBG_FAST_NATIVE=0 builds the portable extension, e.g. to copy it elsewhere.
export PBG_FAST_NATIVE ?= 1

EXT := pbg_fast/_C$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py

.PHONY: setup demo test bench check-cuda cmake-check peer clean

# PyTorch-BigGraph 1.0 in its own venv, for the compatibility tests (../shared/PEERS.md):
# `make peer`, then PBG_FAST_PEER_PYTHON=.peer-venv/bin/python make test.
PEER := .peer-venv

# The chain: .deps (Python packages) -> .installed (editable install) -> $(EXT) (the extension).
# Only C++/CUDA sources and setup.py make $(EXT) rebuild (~15 min): the stamps before it are
# order-only prerequisites (after `|`), so changing the package list below (this Makefile or
# pyproject.toml) re-runs pip for the packages and nothing else. The editable install is made
# once; after changing pyproject.toml's entry points or package list, `rm .venv/.installed`.
$(VENV)/.deps: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Keep an existing torch (a CUDA build, say); otherwise take the pinned CPU build.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q numpy h5py pyarrow tqdm pyyaml pybind11 ninja pytest hypothesis \
	  "setuptools>=64" wheel
	@# UMLS, Kinship and Nations (pbg_fast.datasets) as package data only: pykeen is never
	@# imported, so none of its dependencies is installed.
	$(PIP) install -q --no-deps pykeen==1.11.1
	@touch $@

$(VENV)/.installed: | $(VENV)/.deps
	@# The package only: the extension is built once, by the rule below (incrementally).
	PBG_FAST_NO_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

# Incremental rebuild of the extension when a C++/CUDA source changes.
$(EXT): $(CSRC) | $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	@touch $@

setup: $(EXT)

demo: setup
	$(PY) -m pbg_fast demo $(if $(QUICK),--quick,)

test: setup check-cuda
	PBG_FAST_REQUIRE_EXT=1 $(PY) -m pytest -q tests

# Objects kept in cuda-check/: only what changed is recompiled.
check-cuda:
	bash csrc/cuda/check.sh cuda-check

bench: setup
	$(PIP) install -q matplotlib
	$(PY) benchmarks/bench_ops.py $(if $(QUICK),--quick,)
	$(PY) benchmarks/bench_import.py $(if $(QUICK),--quick,)
	$(PY) benchmarks/bench_train.py $(if $(QUICK),--quick,)

cmake-check: setup
	cmake -S . -B cmake-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	cmake --build cmake-build
	./cmake-build/bench_chunk_step_cpp

peer: $(PEER)/.ok

$(PEER)/.ok:
	$(PYTHON) -m venv $(PEER)
	$(PEER)/bin/pip install -q "$(TORCH_SPEC)"
	$(PEER)/bin/pip install -q --no-deps torchbiggraph==1.0.0
	$(PEER)/bin/pip install -q numpy h5py attrs tqdm "setuptools<81"
	@# PEERS.md: 1.0.0 compares types with `is not Optional[...]`, which breaks on 3.11.
	sed -i 's/if type_ is not Optional\[/if type_ != Optional[/' \
	  $(PEER)/lib/python3*/site-packages/torchbiggraph/schema.py
	$(PEER)/bin/python -c "import torchbiggraph.train"
	@touch $@

clean:
	rm -rf build cmake-build pbg_fast/_C*.so
