"""Regenerate cortexd/v2/pb/inference_pb2.py (+ .pyi, for type checkers) and inference_pb2_grpc.py
from inference.proto.

    .venv/bin/python -m pip install grpcio-tools    # a build-time tool only, not a dependency
    .venv/bin/python scripts/gen_v2_grpc.py

The generated modules are committed, so installing cortexd needs no protoc and no build
step (the .deb and editable installs just copy them). After generating, the message module
is changed in one way: its descriptors go into a descriptor pool of its own instead of
protobuf's default pool. The proto's package must be `inference` (the method paths clients
call are /inference.GRPCInferenceService/...), and tritonclient, when it is imported into
the same process (the tests do; so may a user's predictor), registers the same message
names in the default pool, which would refuse the second definition.

The protobuf and grpcio versions the code was generated with are the lowest that can load
it (the generated code checks at import); pyproject.toml's dependencies say the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = "cortexd/v2/pb/inference.proto"
PB2 = os.path.join(REPO, "cortexd/v2/pb/inference_pb2.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "_POOL.AddSerializedFile("
POOL_NOTE = (
    "# cortexd: a pool of our own, not protobuf's default one, where tritonclient's messages of\n"
    "# the same names may live in the same process (scripts/gen_v2_grpc.py)\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
)


def private_pool(source: str) -> str:
    """The generated message module with its descriptors in a pool of its own."""
    if source.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{PB2}: expected one {DEFAULT_POOL!r}; the generator's output changed")
    source = source.replace(DEFAULT_POOL, PRIVATE_POOL)
    return re.sub(r"^(DESCRIPTOR = )", POOL_NOTE + r"\1", source, count=1, flags=re.MULTILINE)


def main() -> int:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO}", f"--python_out={REPO}",
           f"--pyi_out={REPO}", f"--grpc_python_out={REPO}", os.path.join(REPO, PROTO)]
    result = subprocess.run(cmd, cwd=REPO, check=False)
    if result.returncode != 0:
        return result.returncode
    with open(PB2) as f:
        source = f.read()
    with open(PB2, "w") as f:
        f.write(private_pool(source))
    print(f"generated {os.path.relpath(PB2, REPO)} and inference_pb2_grpc.py from {PROTO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
