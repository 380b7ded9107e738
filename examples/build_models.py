"""Build the models the examples serve, locally (nothing is downloaded from a model hub).

Runs each examples/<name>/build_model.py whose output is missing; `make run` calls this.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    for script in sorted(glob.glob(os.path.join(HERE, "*", "build_model.py"))):
        print(f"building {os.path.relpath(script, HERE)}", flush=True)
        subprocess.run([sys.executable, script], check=True, cwd=os.path.dirname(script))
    return 0


if __name__ == "__main__":
    sys.exit(main())
