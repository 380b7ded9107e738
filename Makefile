# cortexd: `make run` serves examples/ on http://localhost:8888, `make test` runs the tests.
# Both create the virtual environment first (.venv, everything installed from the package index).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: venv run lint test test-fast test-slow test-gpu bench bench-wrk bench-v2 deb examples clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,tensorflow,s3]'
	touch $@

# Models the examples need that are built locally rather than committed.
examples: venv
	$(PY) examples/build_models.py

# The examples' APIs on $(PORT), V2 REST included. SERVE_ARGS adds `cortexd serve` flags, e.g.
# `make run SERVE_ARGS="--grpc-port 8001"` for V2 over gRPC (docs/v2.md).
SERVE_ARGS ?=
run: venv examples
	$(VENV)/bin/cortexd serve --config examples/cortex.yaml --port $(PORT) \
		--state-dir .cortexd/state --log-dir .cortexd/log $(SERVE_ARGS)

# The linter and the type checker (settings in pyproject.toml: ruff on the code, tests, scripts
# and examples; mypy --strict on cortexd/).
lint: venv
	$(VENV)/bin/ruff check cortexd tests bench scripts examples
	$(VENV)/bin/mypy

# Fast tests first (pure tables, in-process), then the ones that start real daemons.
test: venv
	$(PY) -m pytest -q -m "not slow and not gpu"
	$(PY) -m pytest -q -m "slow and not gpu"

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not gpu"

test-slow: venv
	$(PY) -m pytest -q -m "slow and not gpu"

# On a machine with an NVIDIA GPU: the tests marked gpu, which skip where NVML finds none
# (scripts/gpu-check.sh sets up a venv with onnxruntime-gpu's CUDA libraries and runs this).
test-gpu: venv
	$(PY) -m pytest -v -rs -s -m gpu $(GPU_TEST_ARGS)

clean:
	rm -rf .cortexd dist build *.egg-info

# dist/cortexd_<version>_<arch>.deb: the daemon, its unit, a default /etc/cortexd/cortex.yaml.
deb:
	packaging/build-deb.sh

# Benchmarks (bench/README.md): onnxruntime in process, a one-process Sanic ceiling and cortexd
# side by side under wrk; prints the table and the ratios, writes bench/results/<time>.json.
# About 8 minutes on 2 cores. Installs wrk from the distribution's packages when it is missing.
BENCH_ARGS ?=
bench: venv bench-wrk
	$(PY) bench/run.py $(BENCH_ARGS)

bench-wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }

# The V2 cells (issue 17) beside MLServer's, rounds interleaved (bench/README.md, "V2 cells").
# MLServer runs from its own venv, .bench-venvs/mlserver, made on first use. About 2 minutes.
BENCH_V2_ARGS ?= --target cortexd,mlserver,mlserver-w1 --rounds 5
bench-v2: venv bench-wrk
	PYTHON=$(PYTHON) bench/mlserver-venv.sh
	$(PY) bench/v2.py $(BENCH_V2_ARGS)
