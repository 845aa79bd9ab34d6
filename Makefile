# Set-up, tests and benchmarks. `make test` and `make bench` install everything they need on a
# fresh machine first (once; .make/installed records it).
#
# torch is pinned to the CPU wheel this project's machines carry only when no torch is
# installed: a user with a CUDA torch keeps theirs (and its triton).

PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.9.0
# torchvision's video ResNets are the reference our zoo is tested against. Its PyPI wheel is a
# CUDA build; with --no-deps it does not drag CUDA torch in, and its pure-Python models work on
# the CPU torch (tests/conftest.py works around its C++ ops not loading).
TORCHVISION_VERSION ?= 0.28.0
# pytorchvideo's X3D/CSN/SlowFast builders are the reference for ours (checkpoint layout and
# outputs); 0.1.5 is pure Python, installed without its dependency list so it pulls no torch.
PYTORCHVIDEO_VERSION ?= 0.1.5
STAMP := .make/installed
# OpenVINO is a baseline of `make bench` on CPU (an optional extra; `videoconv bench` skips it
# with a note where it is missing).
BENCH_STAMP := .make/bench-extras

.PHONY: install test bench bench-smoke train-smoke info clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu)
	@mkdir -p .make
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the installed torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "installing torch==$(TORCH_VERSION) and triton==$(TRITON_VERSION)"; \
		$(PIP) install "torch==$(TORCH_VERSION)" "triton==$(TRITON_VERSION)"; \
	fi
	$(PIP) install setuptools wheel ninja numpy "pytest>=7" "pytest-benchmark>=4" pillow \
		matplotlib tqdm av
	@if ! $(PIP) show torchvision >/dev/null 2>&1 && \
	    $(PYTHON) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')"; then \
		$(PIP) install --no-deps "torchvision==$(TORCHVISION_VERSION)"; \
	fi
	$(PIP) install --no-deps "pytorchvideo==$(PYTORCHVIDEO_VERSION)"
	$(PIP) install fvcore iopath
	$(PIP) install --no-build-isolation -e ".[test]"
	@touch $@

test: $(STAMP)
	$(PYTHON) -m pytest -q --doctest-modules tests videoconv

$(BENCH_STAMP): $(STAMP)
	$(PIP) install openvino
	@touch $@

# The default workload on the device present (about ten minutes): the layers of r3d_18 and
# r2plus1d_18 and three whole models on CPU, the five suite models on a GPU; every provider
# that can run here. Writes benchmarks/results/bench_<device>.{json,md} and its plots.
bench: $(BENCH_STAMP)
	$(PYTHON) -m videoconv bench --output-dir benchmarks/results

# Seconds, for CI: proves the benchmark runs end to end; its numbers mean nothing.
bench-smoke: $(STAMP)
	$(PYTHON) -m videoconv bench --smoke --no-progress --json /tmp/videoconv_bench_smoke.json --plot /tmp/videoconv_bench_smoke

# The synthetic-motion demonstration (issue 7): r2plus1d_18 learns the direction of motion,
# the per-frame 2D c2d_r18 cannot (about 2.5 + 0.6 minutes on 2 CPU cores). Writes both reports
# and one plot of both training curves to benchmarks/results/.
train-smoke: $(STAMP)
	$(PYTHON) -m videoconv train --model r2plus1d_18 --data synthetic-motion --preset smoke \
		--json benchmarks/results/train_smoke_r2plus1d_18.json --no-progress
	$(PYTHON) -m videoconv train --model c2d_r18 --data synthetic-motion --preset smoke \
		--json benchmarks/results/train_smoke_c2d_r18.json --no-progress \
		--plot benchmarks/results/train_smoke.png --plot-with benchmarks/results/train_smoke_r2plus1d_18.json

info: $(STAMP)
	$(PYTHON) -m videoconv info

clean:
	rm -rf .make build *.egg-info videoconv/_C*.so
