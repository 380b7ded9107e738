"""Conversions between JSON values and numpy, in both directions.

`to_jsonable` turns what a predictor returns (numpy scalars/arrays, bytes, tuples, nested in
lists and dicts) into plain JSON types. It never imports numpy: if numpy is not loaded in this
process no value can be a numpy value, so a Python replica that does not use numpy pays
nothing for it. Plain values are returned as they are (the same objects, no copy).

`to_array` turns one JSON value into a numpy array of a model input's dtype and shape, or
raises `InputMismatch` saying what did not fit. The ONNX and TensorFlow clients share it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_PLAIN = (str, int, float, bool, type(None))
_KEY_TYPES = (str, int, float, bool, type(None))


def to_jsonable(obj: Any) -> Any:
    """Return obj with numpy values, bytes, tuples and sets replaced by plain JSON types.

    Containers are copied only when something inside them changed. Bytes are decoded as UTF-8
    (invalid bytes replaced), the form TensorFlow string outputs take. Dict keys that JSON
    cannot hold (numpy integers, tuples) become their JSON-able or str() form. Objects of other
    types are returned unchanged, so the JSON encoder reports them by name.
    """
    t = type(obj)
    if t in _PLAIN:
        return obj
    if t is list:
        return _list(obj)
    if t is dict:
        return _dict(obj)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            # tolist() gives Python scalars; object/bytes arrays may still hold bytes or arrays
            out = obj.tolist()
            return to_jsonable(out) if obj.dtype.kind in "OSUV" else out
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item())
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (tuple, set, frozenset)):
        return _list(list(obj))
    if isinstance(obj, dict):  # OrderedDict, defaultdict and friends
        return _dict(dict(obj))
    if isinstance(obj, list):
        return _list(list(obj))
    if isinstance(obj, _PLAIN):  # subclasses of str/int/float (IntEnum, ...) stay as they are
        return obj
    return obj


def _list(items: list[Any]) -> list[Any]:
    out: list[Any] | None = None
    for i, item in enumerate(items):
        if type(item) in _PLAIN:
            continue  # the common case costs one type lookup per item
        converted = to_jsonable(item)
        if converted is not item:
            if out is None:
                out = items[:i]
            out.append(converted)
            out.extend(to_jsonable(rest) for rest in items[i + 1:])
            return out
    return items


def _dict(mapping: dict[Any, Any]) -> dict[Any, Any]:
    for i, (key, value) in enumerate(mapping.items()):
        if type(key) in _KEY_TYPES and type(value) in _PLAIN:
            continue
        new_key, new_value = _key(key), to_jsonable(value)
        if new_key is key and new_value is value:
            continue
        out: dict[Any, Any] = {}
        for j, (k, v) in enumerate(mapping.items()):
            if j < i:
                out[k] = v
            elif j == i:
                out[new_key] = new_value
            else:
                out[_key(k)] = to_jsonable(v)
        return out
    return mapping


def _key(key: Any) -> Any:
    if type(key) in _KEY_TYPES:
        return key
    converted = to_jsonable(key)
    return converted if type(converted) in _KEY_TYPES else str(converted)


class InputMismatch(ValueError):
    """A payload value does not fit a model input; str() says what was expected and what came."""


# Which kinds of numpy array may be cast to which input kind without losing meaning.
# f: float, i/u: (un)signed int, b: bool, U/S/O: text. Floats go to ints only when integral.
_CASTS: dict[str, str] = {"f": "biuf", "i": "biuf", "u": "biuf", "b": "biu", "U": "US", "S": "US", "O": "US"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans", "U": "strings",
               "S": "strings", "O": "mixed or null values"}


def describe_shape(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "any shape"
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def to_array(name: str, value: Any, dtype: Any, shape: Sequence[int | None] | None) -> Any:
    """Convert one payload value to a numpy array for the input `name`.

    dtype is a numpy dtype (object for strings); shape lists the input's dimensions, None for
    a dynamic one (a symbolic ONNX dimension or an unknown TF one), or is None when the rank
    itself is unknown (nothing checked). Rule for a missing batch axis: a value with one
    dimension fewer than the input is taken as a single sample when the input's first
    dimension is dynamic or 1, and gets a leading axis of 1 (e.g. [5.1, 3.5, 1.4, 0.2] for an
    input of shape [None, 4] becomes [[5.1, 3.5, 1.4, 0.2]]). Fixed dimensions must match;
    dynamic ones take what came.
    """
    import numpy as np

    target = np.dtype(dtype)

    def expected() -> str:  # built only on error: str() of a numpy dtype costs ~10 us
        return f"input {name!r} expects {_dtype_name(target)} of shape {describe_shape(shape)}"

    if isinstance(value, np.ndarray):
        arr = value
    else:
        if isinstance(value, dict):
            raise InputMismatch(f"{expected()}; got an object with keys {sorted(map(str, value))[:10]}")
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):  # ragged nesting, e.g. [[1, 2], [3]]
            raise InputMismatch(f"{expected()}; got nested lists whose rows differ in length") from None
    arr = _cast(arr, target, expected)
    if shape is None:
        return arr
    want = shape
    if len(want) == 0:
        # onnxruntime reports unknown rank and scalars alike as []: leave the check to the runtime
        return arr
    if arr.ndim == len(want) - 1 and want[0] in (None, 1) and _dims_fit(arr.shape, want[1:]):
        return arr[np.newaxis, ...]
    if arr.ndim != len(want) or not _dims_fit(arr.shape, want):
        raise InputMismatch(f"{expected()}; got shape {describe_shape(arr.shape)}")
    return arr


def _dims_fit(got: Sequence[int], want: Sequence[int | None]) -> bool:
    return len(got) == len(want) and all(w is None or w == g for g, w in zip(got, want, strict=True))


def _dtype_name(dtype: Any) -> str:
    return "strings" if dtype.kind in "OUS" else str(dtype)


def _cast(arr: Any, target: Any, expected: Callable[[], str]) -> Any:
    import numpy as np

    if arr.dtype == target:
        return arr
    kind = arr.dtype.kind
    if kind == "O" and target.kind == "O" and all(isinstance(v, (str, bytes)) for v in arr.flat):
        return arr
    if arr.size == 0:
        return arr.astype(target)  # [] parses as float64: nothing to lose
    if target.kind not in _CASTS:  # bfloat16 and other extension dtypes: numpy decides
        try:
            return arr.astype(target)
        except (ValueError, TypeError):
            raise InputMismatch(f"{expected()}; got {_KIND_WORDS.get(kind, str(arr.dtype))}") from None
    if kind not in _CASTS[target.kind]:
        raise InputMismatch(f"{expected()}; got {_KIND_WORDS.get(kind, str(arr.dtype))}")
    if target.kind == "O":
        return arr.astype(object)
    if target.kind in "iu":
        if kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.trunc(arr))):
            raise InputMismatch(f"{expected()}; got numbers that are not whole")
        info = np.iinfo(target)
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            raise InputMismatch(f"{expected()}; got values out of its range ({low} .. {high})")
    if target.kind == "b" and kind in "iu" and not np.all((arr == 0) | (arr == 1)):
        raise InputMismatch(f"{expected()}; got integers other than 0 and 1")
    return arr.astype(target)


def name_mismatch(payload: Mapping[Any, Any], names: Sequence[str]) -> str | None:
    """What is wrong with the keys of a payload for a model taking inputs `names`, or None."""
    missing = [n for n in names if n not in payload]
    extra = sorted(str(k) for k in payload if k not in names)
    parts = []
    if missing:
        parts.append(f"missing inputs {missing}")
    if extra:
        parts.append(f"unexpected keys {extra}")
    return "; ".join(parts) or None
