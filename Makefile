# pbg_fast: every entry point creates .venv if missing, installs what it needs, builds, runs.
#   make demo    set up, then run the main job on built-in data
#   make test    set up, then the whole test suite (the CUDA extension's build included)
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
# Local builds target this machine's CPU: one version of each kernel, the fastest compile. The
# portable build (PBG_FAST_NATIVE=0, what `pip install .` makes) runs as fast within a few
# percent, choosing its kernels' ISA at run time (benchmarks/RESULTS.md), but compiles the hot
# element-wise code three times; `make test` checks it too (check-portable).
export PBG_FAST_NATIVE ?= 1

EXT := pbg_fast/_C$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py csrc/BUILD.txt

.PHONY: setup demo test bench check-cuda check-cuda-ext check-portable cmake-check peer clean

# PyTorch-BigGraph 1.0 in its own venv, for the compatibility tests (../shared/PEERS.md):
# `make peer`, then PBG_FAST_PEER_PYTHON=.peer-venv/bin/python make test.
PEER := .peer-venv

# The chain: .deps (Python packages) -> .installed (editable install) -> $(EXT) (the extension).
# Only C++/CUDA sources and setup.py make $(EXT) rebuild (~15 min): the stamps before it are
# order-only prerequisites (after `|`), so changing the package list below (this Makefile or
# pyproject.toml) re-runs pip for the packages and nothing else. The editable install is made
# once; after changing pyproject.toml's entry points or package list, `rm .venv/.installed`.
# What every venv of this project installs beside torch (.venv and .venv-cuda alike). UMLS,
# Kinship and Nations (pbg_fast.datasets) come as pykeen's package data only: pykeen is never
# imported, so it is installed without its dependencies.
PY_DEPS := numpy h5py pyarrow tqdm pyyaml pybind11 ninja pytest hypothesis "setuptools>=64" wheel
PY_NODEPS := pykeen==1.11.1

$(VENV)/.deps: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Keep an existing torch (a CUDA build, say); otherwise take the pinned CPU build.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q $(PY_DEPS)
	$(PIP) install -q --no-deps $(PY_NODEPS)
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

# The CUDA backend's host emulation (tests/ops/test_cuda_host_emulation.py) must run wherever
# the CUDA toolkit is installed.
test: setup check-cuda
	PBG_FAST_REQUIRE_EXT=1 PBG_FAST_REQUIRE_CUDA_EMU=$(if $(shell command -v nvcc),1,0) \
	  $(PY) -m pytest -q tests
	$(MAKE) --no-print-directory check-portable

# $(call test_build,DIR,PYTHON,CONDITION,MESSAGE): the op tests against the extension built into
# DIR/lib, run from a package copy in DIR/pkg, which comes first on the path (--import-mode=append
# keeps pytest from putting the checkout's own pbg_fast/ ahead of it); first a check that the
# copy is what gets imported and that CONDITION holds for its build_info() `i` (else MESSAGE).
define test_build
	rm -rf $(1)/pkg && mkdir -p $(1)/pkg && cp -r pbg_fast $(1)/pkg/
	cp $(1)/lib/pbg_fast/_C*.so $(1)/pkg/pbg_fast/
	cd $(1)/pkg && $(abspath $(2)) -c "import pbg_fast, sys; i = pbg_fast.build_info(); \
	  print(i); sys.exit(0 if pbg_fast.__file__.startswith('$(abspath $(1))') and \
	  $(3) else '$(4)')"
	cd $(1)/pkg && PYTHONPATH=$(abspath $(1))/pkg PBG_FAST_REQUIRE_EXT=1 \
	  $(abspath $(2)) -m pytest -q --import-mode=append -p no:cacheprovider $(CURDIR)/tests/ops
endef

# The portable build (x86-64 baseline + run-time ISA dispatch), in build-portable/ (incremental),
# and the op tests against it.
PORTABLE := build-portable
check-portable: | $(VENV)/.installed
	PBG_FAST_NATIVE=0 $(PY) setup.py -q build_ext --build-lib $(PORTABLE)/lib \
	  --build-temp $(PORTABLE)/tmp
	$(call test_build,$(PORTABLE),$(PY),i['compiled_isa'] == 'x86-64',check-portable: not the portable build)

# The CUDA side, GPU or not: nvcc's compile check of the kernels (objects kept in cuda-check/,
# only what changed is recompiled), then the real extension, binding included, built against a
# CUDA torch in its own venv ($(VENV_CUDA), cached) into build-cuda/ (incremental, like
# check-portable), imported, and the op tests run against it (test_cuda_build checks from the
# dispatcher that every device op has a CUDA kernel; the CUDA cases of the others skip without a
# GPU). Skipped with a notice where there is no nvcc. setup.py finds the toolkit behind an nvcc
# wrapper and the cuBLAS headers in the venv's nvidia/ wheels.
VENV_CUDA := .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_ARCHS ?= 9.0
BUILD_CUDA := build-cuda
check-cuda:
	bash csrc/cuda/check.sh cuda-check
	@if command -v nvcc >/dev/null 2>&1; then $(MAKE) --no-print-directory check-cuda-ext; \
	  else echo "nvcc not found; skipping the CUDA extension build"; fi

$(VENV_CUDA)/.deps: pyproject.toml Makefile
	@test -x $(VENV_CUDA)/bin/python || $(PYTHON) -m venv $(VENV_CUDA)
	@$(VENV_CUDA)/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is None)" \
	  2>/dev/null || $(VENV_CUDA)/bin/pip install -q "$(CUDA_TORCH_SPEC)"
	$(VENV_CUDA)/bin/pip install -q $(PY_DEPS)
	$(VENV_CUDA)/bin/pip install -q --no-deps $(PY_NODEPS)
	@touch $@

check-cuda-ext: $(VENV_CUDA)/.deps
	TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" PBG_FAST_CUDA=1 $(VENV_CUDA)/bin/python setup.py -q \
	  build_ext --build-lib $(BUILD_CUDA)/lib --build-temp $(BUILD_CUDA)/tmp
	$(call test_build,$(BUILD_CUDA),$(VENV_CUDA)/bin/python,i['cuda_ext'],check-cuda: not the CUDA build)

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
	rm -rf build build-portable build-cuda cmake-build pbg_fast/_C*.so
