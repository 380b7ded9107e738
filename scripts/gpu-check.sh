#!/usr/bin/env bash
# The GPU checks, from a fresh checkout on a machine with an NVIDIA GPU (driver >= 580 for
# onnxruntime-gpu's CUDA 13 build) and access to the Python package index:
#
#   scripts/gpu-check.sh                 # everything: venvs, `make test-gpu`, TensorFlow on the GPU, timing
#   GPU_CHECK_TF=0 scripts/gpu-check.sh  # without the TensorFlow venv (saves ~3 GB of downloads)
#
# 1. `make venv` into build/gpu-venv, plus onnxruntime-gpu's CUDA 13 and cuDNN 9 libraries as
#    pip wheels (onnxruntime-gpu[cuda,cudnn]; the replica calls onnxruntime.preload_dlls(),
#    which finds them in site-packages, so no system CUDA toolkit is needed).
# 2. `make test-gpu` there: NVML inventory, a replica's CUDA_VISIBLE_DEVICES and what the CUDA
#    driver lists inside it, an ONNX replica on CUDAExecutionProvider, two replicas on two GPUs.
# 3. TensorFlow on the GPU needs `tensorflow[and-cuda]` (CUDA 12 wheels) instead of the
#    tensorflow-cpu that cortexd[tensorflow] installs. Its cuDNN for CUDA 12 and onnxruntime's
#    for CUDA 13 would overwrite each other in one environment, so it gets its own venv
#    (build/gpu-venv-tf), where only the TensorFlow GPU test runs.
# 4. tests/gpu/gpu_timing.py: an ONNX MLP through cortexd on the GPU vs onnxruntime in process.
#
# Everything is logged to $OUT/gpu-check.log when OUT is set (with gpu-timing.json and the
# pytest junit files beside it), else to build/gpu-check/. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-build/gpu-check}"
mkdir -p "$OUT_DIR" build
LOG="$OUT_DIR/gpu-check.log"
: >"$LOG"
VENV="${GPU_VENV:-build/gpu-venv}"
TF_VENV="${GPU_TF_VENV:-build/gpu-venv-tf}"
PYTHON="${PYTHON:-python3}"
failed=()

step() {  # step NAME COMMAND...: runs it, logs it, remembers a failure and goes on
    local name="$1"
    shift
    echo "==== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "==== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || failed+=("$name")
    return "$rc"
}

ort_version() {
    "$1/bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))'
}

step "machine" sh -c 'nvidia-smi; uname -a; '"$PYTHON"' --version'

if step "venv" make venv VENV="$VENV" PYTHON="$PYTHON"; then
    # Same onnxruntime-gpu version as setup.py resolved, with its CUDA/cuDNN wheels; cuBLAS is
    # named too (cuDNN needs it; some resolutions of the extras leave it out).
    step "onnxruntime-gpu CUDA libraries" "$VENV/bin/python" -m pip install -q \
        "onnxruntime-gpu[cuda,cudnn]==$(ort_version "$VENV")" "nvidia-cublas>=13,<14"
    step "onnxruntime providers" "$VENV/bin/python" -c '
import onnxruntime as ort
ort.preload_dlls()
print("onnxruntime", ort.__version__, "device", ort.get_device(), "available:", ort.get_available_providers())
'
    step "make test-gpu" make test-gpu VENV="$VENV" GPU_TEST_ARGS="--junitxml=$OUT_DIR/test-gpu.xml"
fi

if [ "${GPU_CHECK_TF:-1}" = "1" ]; then
    if step "tensorflow venv" make venv VENV="$TF_VENV" PYTHON="$PYTHON"; then
        TF_VERSION="$("$TF_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null || true)"
        step "tensorflow[and-cuda]" sh -c "'$TF_VENV/bin/python' -m pip uninstall -y -q tensorflow-cpu; \
            '$TF_VENV/bin/python' -m pip install -q 'tensorflow[and-cuda]${TF_VERSION:+==$TF_VERSION}'"
        step "tensorflow sees" "$TF_VENV/bin/python" -c \
            'import tensorflow as tf; print(tf.__version__, tf.config.list_physical_devices("GPU"))'
        step "tensorflow GPU test" "$TF_VENV/bin/python" -m pytest -v -rs -s -m gpu tests/gpu/test_gpu_serving.py \
            -k tensorflow --junitxml="$OUT_DIR/test-gpu-tf.xml"
    fi
fi

if [ -x "$VENV/bin/python" ]; then
    step "timing" "$VENV/bin/python" tests/gpu/gpu_timing.py --out "$OUT_DIR"
fi

if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu-check: all steps passed; log: $LOG" | tee -a "$LOG"
    exit 0
fi
echo "gpu-check: failed: ${failed[*]}; log: $LOG" | tee -a "$LOG"
exit 1
