#!/bin/sh
# MLServer's own virtual environment for the V2 peer cells (bench/v2.py --target mlserver):
# its pins on fastapi, pydantic, grpcio and protobuf would fight TensorFlow's and tritonclient's
# in .venv, so it gets a venv of its own, git-ignored, made once (rerun: no-op while the
# constraints are unchanged).
#
#   bench/mlserver-venv.sh [VENV]    # default .bench-venvs/mlserver in the checkout (BENCH_MLSERVER_VENV
#                                    # points bench/v2.py at another)
#
# Every version is pinned by bench/mlserver-constraints.txt (a pip freeze), among them:
# mlserver 1.7.1; onnxruntime 1.31.1, the CPU package at cortexd's .venv version (there
# onnxruntime-gpu, whose CPU provider the bench uses), so both servers run the same kernels;
# uvloop 0.21.0, because uvloop 0.22+ breaks MLServer 1.7.1's inference workers
# (parallel_workers >= 1, its default): a worker dies at start on asyncio.get_event_loop()
# (SeldonIO/MLServer#2286, fix unreleased).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
VENV=${1:-$(dirname "$here")/.bench-venvs/mlserver}
CONSTRAINTS="$here/mlserver-constraints.txt"
if [ -x "$VENV/bin/mlserver" ] && cmp -s "$CONSTRAINTS" "$VENV/.constraints.txt"; then
	echo "$VENV: up to date"
	exit 0
fi
"$PYTHON" -m venv "$VENV"
# PYTHONPATH unset: a checkout on it must not leak into this environment's imports.
env -u PYTHONPATH "$VENV/bin/python" -m pip install -q --upgrade pip
env -u PYTHONPATH "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" mlserver onnxruntime numpy uvloop
env -u PYTHONPATH "$VENV/bin/python" -c 'import sys, mlserver, onnxruntime, numpy, uvloop
print(sys.version.split()[0], "mlserver", mlserver.__version__, "onnxruntime", onnxruntime.__version__,
      "numpy", numpy.__version__, "uvloop", uvloop.__version__)'
cp "$CONSTRAINTS" "$VENV/.constraints.txt"
