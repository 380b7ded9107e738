"""V2 tensor datatypes and their numpy and wire forms.

The table (`DATATYPES`) is plain Python, so the daemon can use it (element sizes, struct
codes for gRPC's typed contents) without importing numpy. The conversions below it import
numpy lazily: only replicas, which run models, convert tensors.

BYTES tensors are numpy object arrays of `bytes`. On the wire (Triton's binary tensor data
extension, and gRPC's raw contents) each element is a 4-byte little-endian length followed
by that many bytes, elements in row-major order. BF16 is not supported (numpy has no such
dtype); requests that use it get a clear error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class TensorError(ValueError):
    """A tensor's data does not fit its datatype or shape; the message names the tensor."""


@dataclass(frozen=True)
class Datatype:
    name: str  # the V2 name: "FP32"
    numpy: str  # numpy dtype name ("object" for BYTES)
    size: int  # bytes per element on the wire; 0 = variable (BYTES)
    code: str  # struct/array format code for one element ("" for BYTES)
    kinds: str  # numpy kinds a JSON value may parse to and still be this type (see json_array)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool", 1, "?", "b"),
        Datatype("UINT8", "uint8", 1, "B", "iu"),
        Datatype("UINT16", "uint16", 2, "H", "iu"),
        Datatype("UINT32", "uint32", 4, "I", "iu"),
        Datatype("UINT64", "uint64", 8, "Q", "iu"),
        Datatype("INT8", "int8", 1, "b", "iu"),
        Datatype("INT16", "int16", 2, "h", "iu"),
        Datatype("INT32", "int32", 4, "i", "iu"),
        Datatype("INT64", "int64", 8, "q", "iu"),
        Datatype("FP16", "float16", 2, "e", "iuf"),
        Datatype("FP32", "float32", 4, "f", "iuf"),
        Datatype("FP64", "float64", 8, "d", "iuf"),
        Datatype("BYTES", "object", 0, "", "U"),
    )
}

# numpy dtype names (and the names cortexd's describe() uses, "string" among them) -> V2
_FROM_NAME: dict[str, str] = {d.numpy: d.name for d in DATATYPES.values()}
_FROM_NAME.update({"string": "BYTES", "str": "BYTES", "bytes": "BYTES", "half": "FP16", "float": "FP32",
                   "double": "FP64", "bfloat16": "BF16"})


def datatype(name: str, tensor: str) -> Datatype:
    """The Datatype called `name`; TensorError naming the tensor when there is none."""
    found = DATATYPES.get(name)
    if found is None:
        if name == "BF16":
            raise TensorError(f"{tensor}: datatype BF16 is not supported here; send FP32 or FP16")
        raise TensorError(f"{tensor}: unknown datatype {name!r}; expected one of {', '.join(DATATYPES)}")
    return found


def v2_name(dtype_name: str) -> str:
    """The V2 datatype for a numpy or describe() dtype name ("float32", "string", "bool"); an
    unknown name comes back upper-cased, so metadata still shows what the model said."""
    return _FROM_NAME.get(dtype_name, dtype_name.upper())


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def check_shape(shape: Any, tensor: str) -> list[int]:
    """A request's shape as a list of non-negative ints, or TensorError."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"{tensor}: shape must be a list of non-negative integers, got {shape!r}")
    return shape


# ---------------------------------------------------------------- BYTES wire form (no numpy)


def pack_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """Triton's BYTES serialisation: each element as <uint32 little-endian length><bytes>."""
    parts: list[bytes] = []
    length = struct.Struct("<I").pack
    for element in elements:
        parts.append(length(len(element)))
        parts.append(element)
    return b"".join(parts)


def unpack_bytes_elements(data: bytes | memoryview, tensor: str) -> list[bytes]:
    """The elements of a serialised BYTES tensor; TensorError when a length runs past the end."""
    view = memoryview(data)
    out: list[bytes] = []
    at, end = 0, len(view)
    unpack = struct.Struct("<I").unpack_from
    while at < end:
        if end - at < 4:
            raise TensorError(f"{tensor}: BYTES data ends inside an element's 4-byte length")
        (n,) = unpack(view, at)
        at += 4
        if at + n > end:
            raise TensorError(f"{tensor}: BYTES element {len(out)} says {n} bytes, only {end - at} remain")
        out.append(bytes(view[at : at + n]))
        at += n
    return out


def pack_values(dtype: Datatype, values: Sequence[Any], tensor: str) -> bytes:
    """Flat Python values (gRPC typed contents, or JSON data the daemon must turn into raw
    contents) as the tensor's raw little-endian bytes, without numpy."""
    if dtype.name == "BYTES":
        return pack_bytes_elements(v if isinstance(v, bytes) else str(v).encode() for v in values)
    try:
        return struct.pack(f"<{len(values)}{dtype.code}", *values)
    except (struct.error, TypeError, OverflowError) as exc:
        raise TensorError(f"{tensor}: values do not fit {dtype.name}: {exc}") from None


# ---------------------------------------------------------------- numpy conversions (replica side)


def numpy_dtype(dtype: Datatype) -> Any:
    import numpy as np

    return np.dtype(dtype.numpy)


def from_raw(dtype: Datatype, data: bytes | memoryview, shape: list[int], tensor: str) -> Any:
    """A numpy array from a tensor's raw bytes (binary extension or gRPC raw contents).
    Fixed-size types are viewed in place (read-only, no copy); BYTES become an object array."""
    import numpy as np

    count = element_count(shape)
    if dtype.name == "BYTES":
        elements = unpack_bytes_elements(data, tensor)
        if len(elements) != count:
            raise TensorError(f"{tensor}: shape {shape} needs {count} BYTES elements, the data holds {len(elements)}")
        arr = np.empty(count, dtype=object)
        arr[:] = elements
        return arr.reshape(shape)
    want = count * dtype.size
    if len(data) != want:
        raise TensorError(
            f"{tensor}: shape {shape} of {dtype.name} needs {want} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.dtype(dtype.numpy).newbyteorder("<")).reshape(shape)


def to_raw(arr: Any, dtype: Datatype) -> bytes:
    """The raw little-endian bytes of an array already of `dtype` (see `as_datatype`)."""
    import numpy as np

    if dtype.name == "BYTES":
        return pack_bytes_elements(_as_bytes(v) for v in arr.reshape(-1))
    little = np.ascontiguousarray(arr, dtype=np.dtype(dtype.numpy).newbyteorder("<"))
    return little.tobytes()


def json_array(dtype: Datatype, data: Any, shape: list[int], tensor: str) -> Any:
    """A numpy array from a JSON `data` value (flat or nested, row-major), checked against
    the datatype (numbers for numeric types, booleans for BOOL, strings for BYTES; a number
    that is not whole is refused for an integer type) and reshaped to `shape`."""
    import numpy as np

    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:  # ragged nesting
        raise TensorError(f"{tensor}: data is nested lists whose rows differ in length") from None
    if arr.size != count:
        raise TensorError(f"{tensor}: shape {shape} needs {count} elements, data has {arr.size}")
    kind = arr.dtype.kind
    if count == 0:
        return np.empty(shape, dtype=dtype.numpy)
    if dtype.name == "BYTES":
        if kind != "U":
            raise TensorError(f"{tensor}: BYTES data must be strings, got {_kind_word(kind)}")
        out = np.empty(count, dtype=object)
        out[:] = [s.encode() for s in arr.reshape(-1).tolist()]
        return out.reshape(shape)
    target = np.dtype(dtype.numpy)
    whole_floats = False
    if kind == "O" and target.kind in "iu" and all(type(v) is int for v in arr.reshape(-1).tolist()):
        # integers beyond 64 bits: numpy keeps them as Python objects
        raise TensorError(f"{tensor}: values {min(arr.flat)} .. {max(arr.flat)} are out of {dtype.name}'s range")
    if kind not in dtype.kinds:
        if target.kind in "iu" and kind == "f":
            if not (np.all(np.isfinite(arr)) and np.all(arr == np.trunc(arr))):
                raise TensorError(f"{tensor}: {dtype.name} data must be whole numbers")
            # 1.0 for an integer type is taken; so are integers past int64 (numpy reads
            # [0, 2**64 - 1] as floats), made exact again below
            whole_floats = True
        else:
            raise TensorError(f"{tensor}: {dtype.name} data must be {_expected_word(dtype)}, got {_kind_word(kind)}")
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            raise TensorError(f"{tensor}: values {low} .. {high} are out of {dtype.name}'s range")
        if whole_floats:
            try:
                return np.array(data, dtype=target).reshape(shape)
            except OverflowError:
                raise TensorError(f"{tensor}: values {low} .. {high} are out of {dtype.name}'s range") from None
    return arr.astype(target, copy=False).reshape(shape)


def as_datatype(value: Any, tensor: str) -> tuple[Datatype, Any]:
    """(Datatype, array) for an output value: a numpy array, or anything np.asarray takes.
    Strings and bytes become a BYTES object array; unsupported dtypes are a TensorError."""
    import numpy as np

    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    kind = arr.dtype.kind
    if kind in "OUS":
        return DATATYPES["BYTES"], arr
    name = _FROM_NAME.get(arr.dtype.name)
    if name is None or name not in DATATYPES:
        raise TensorError(f"{tensor}: numpy dtype {arr.dtype} has no V2 datatype")
    return DATATYPES[name], arr


def json_data(arr: Any, dtype: Datatype, tensor: str) -> list[Any]:
    """The flat, row-major JSON list of an array; BYTES elements as UTF-8 strings."""
    flat = arr.reshape(-1)
    if dtype.name != "BYTES":
        data: list[Any] = flat.tolist()
        return data
    out: list[str] = []
    for v in flat.tolist():
        if isinstance(v, bytes):
            try:
                out.append(v.decode())
            except UnicodeDecodeError:
                raise TensorError(
                    f"{tensor}: holds bytes that are not UTF-8 text; request it with binary_data"
                ) from None
        else:
            out.append(str(v))
    return out


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return str(v).encode()


def _kind_word(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers",
            "U": "strings", "O": "mixed values"}.get(kind, f"values of kind {kind!r}")


def _expected_word(dtype: Datatype) -> str:
    if dtype.name == "BOOL":
        return "booleans"
    if dtype.name.startswith("FP"):
        return "numbers"
    return "integers"
