"""Where a TensorFlow SavedModel is in a model folder: the one rule `cortexd validate`, the
batch-axis check and the replica all use, so validate never refuses a layout the replica
serves (nor accepts one it cannot).

A folder is served when it holds saved_model.pb (or .pbtxt) itself; else its highest
numbered version folder that holds one (10 beats 9, as TF Serving picks); else, when it holds
exactly one folder (a zip of the model's own folder), that folder by the same rule.
"""

from __future__ import annotations

import os

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class NotASavedModel(ValueError):
    """No SavedModel at the path; the message says what was found."""


def is_saved_model_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def pick_version(names: list[str]) -> str | None:
    """The highest numbered entry (numerically: 10 beats 9), or None when none is a number."""
    numbered = [n for n in names if n.isdigit()]
    return max(numbered, key=int) if numbered else None


def locate(path: str, depth: int = 0) -> str:
    """The SavedModel folder to load for the folder `path`; raises NotASavedModel."""
    if is_saved_model_dir(path):
        return path
    entries = sorted(os.listdir(path))
    with_model = [
        n for n in entries if os.path.isdir(os.path.join(path, n)) and is_saved_model_dir(os.path.join(path, n))
    ]
    version = pick_version(with_model)
    if version is not None:
        return os.path.join(path, version)
    subdirs = [n for n in entries if os.path.isdir(os.path.join(path, n)) and not n.startswith((".", "__MACOSX"))]
    if depth == 0 and len(subdirs) == 1:
        try:
            return locate(os.path.join(path, subdirs[0]), depth + 1)
        except NotASavedModel:
            pass
    raise NotASavedModel(
        f"{path}: no saved_model.pb here nor in a numbered version folder "
        f"(found: {', '.join(entries[:10]) or 'nothing'})"
    )
