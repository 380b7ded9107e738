#!/usr/bin/env bash
# GPU sharing, GPU memory and PyTorch on a real GPU, in one call on a lent GPU machine (the
# H200 of the `device` tool: Python 3.12 with PyTorch for CUDA 13, nvidia-ml-py, numpy,
# psutil, pyyaml, uvloop and prometheus-client installed; no network; 64 MiB carried).
#
# 1. Here, once (network): download cortexd's remaining pure-Python dependencies as cp312
#    manylinux wheels into .whl/ (ignored by git, about 1.3 MB):
#        scripts/device-check.sh --prepare
# 2. There, in ONE device `run` call, from the repository root:
#        command:   bash scripts/device-check.sh --device
#        carry:     [".whl"]
#        timeout_s: 540
#    It installs .whl/ into /tmp/site (--target, no index), runs cortexd from the checkout and
#    scripts/device_check.py within 8 minutes (budget 420 s for the checks), and leaves
#    $OUT/device-check.json (results) and $OUT/device-check.log. The steps: NVML inventory and
#    what each framework sees; two APIs with gpu: 0.5 on the one card serving a PyTorch
#    predictor on CUDA, a third asking 0.5 `compute unavailable`; gpu_mem accounting from NVML
#    against torch's own reading; a replica allocating past its gpu_mem stopped with the
#    reason; batched vs unbatched throughput of a PyTorch MLP. Exit 0 when no step failed.
# 3. Here, without a GPU (tests the script, not the GPU): the same steps over the fake NVML
#    and PyTorch on the CPU, with .venv's Python (make venv; PyTorch: pip install torch):
#        scripts/device-check.sh --fake [--out DIR]
#
# Note: the device tool sends the checkout its session started in (the lead's), so run it
# from there once this script is merged; the wheels' folder is `.whl` in that checkout.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
SITE=/tmp/site
PY="${PYTHON:-python3}"
MODE="${1:-}"
shift || true
OUT_DIR="${OUT:-build/device-check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        *) echo "device-check: unknown argument $1" >&2; exit 2 ;;
    esac
done

# What the H200 image lacks of cortexd's dependencies (sanic's own included), pinned to the
# versions the project is tested with. uvloop, aiofiles, multidict, typing-extensions, psutil,
# pyyaml, numpy, nvidia-ml-py, packaging and prometheus-client are on the image already.
WHEEL_PINS=(sanic==25.12.1 sanic-routing==23.12.0 httptools==0.9.0 html5tagger==2.0.0
            tracerite==2.6.5 websockets==17.4 ujson==6.1.0)
SDIST_PINS=(sdnotify==0.3.2)  # published as a source archive only: built into a wheel here

prepare() {
    mkdir -p "$WHEELS"
    grep -qx '/.whl/' .gitignore 2>/dev/null || grep -qx '/.whl/' .git/info/exclude 2>/dev/null \
        || echo '/.whl/' >>.git/info/exclude
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" "${WHEEL_PINS[@]}" || return 1
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "${SDIST_PINS[@]}" || return 1
    ls -la "$WHEELS"
    du -sh "$WHEELS"
}

case "$MODE" in
    --prepare)
        prepare
        ;;
    --device)
        mkdir -p "$OUT_DIR"
        {
            echo "== machine"; nvidia-smi 2>&1 | head -20; uname -a; "$PY" --version
            "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
        } 2>&1 | tee -a "$OUT_DIR/device-check.log"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl 2>&1 | tee -a "$OUT_DIR/device-check.log" || exit 1
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        timeout 470 "$PY" scripts/device_check.py --out "$OUT_DIR" --budget-s 420
        ;;
    --fake)
        # Here the checkout's environment has cortexd's dependencies (make venv); the system
        # python3 usually does not.
        if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
        mkdir -p "$OUT_DIR"
        timeout 470 "$PY" scripts/device_check.py --out "$OUT_DIR" --fake --budget-s 300
        ;;
    *)
        echo "usage: scripts/device-check.sh --prepare | --device | --fake [--out DIR]" >&2
        exit 2
        ;;
esac
