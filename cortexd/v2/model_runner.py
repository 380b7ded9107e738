"""V2 inputs -> an ONNX or TensorFlow model's inputs, by name, checked; outputs selected.

V2 is strict where the API's own endpoint is lenient: an input's datatype must be the
model's (no casting), and its shape must have the model's rank with every fixed dimension
equal (a dynamic one, -1 in the metadata, takes any size). Each mismatch is a V2Error 400
that names the input and says what the model expects, the same words the model metadata uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cortexd.v2.codec import InferRequest, V2Error
from cortexd.v2.datatypes import v2_name


def _shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "any shape"
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


class ModelRunner:
    """One model behind a V2 endpoint: its input signature, its outputs, and a run call."""

    def __init__(
        self,
        signature: dict[str, tuple[Any, tuple[int | None, ...] | None]],
        output_names: list[str],
    ) -> None:
        self.signature = signature  # name -> (numpy dtype, shape with None for dynamic dims, or None)
        self.output_names = output_names

    def run(self, feeds: dict[str, Any], wanted: list[str]) -> list[Any]:
        raise NotImplementedError

    def feeds(self, request: InferRequest) -> dict[str, Any]:
        """The model's inputs for a request, or V2Error 400 naming the first input that does not fit."""
        names = list(self.signature)
        given = [t.name for t in request.inputs]
        missing = [n for n in names if n not in given]
        extra = [n for n in given if n not in self.signature]
        if missing or extra:
            problems = []
            if missing:
                problems.append("missing input" + ("s " if len(missing) > 1 else " ") + ", ".join(map(repr, missing)))
            if extra:
                problems.append("unknown input" + ("s " if len(extra) > 1 else " ") + ", ".join(map(repr, extra)))
            raise V2Error(400, f"{'; '.join(problems)}; the model's inputs are {names}")
        feeds: dict[str, Any] = {}
        for tensor in request.inputs:
            dtype, shape = self.signature[tensor.name]
            want = "BYTES" if dtype.kind in "OUS" else v2_name(dtype.name)
            if tensor.datatype.name != want:
                raise V2Error(
                    400, f"input {tensor.name!r}: datatype {tensor.datatype.name} does not match the model's {want}"
                )
            if shape is not None and len(shape) > 0:
                got = tensor.shape
                if len(got) != len(shape) or any(w is not None and w != g for g, w in zip(got, shape, strict=True)):
                    raise V2Error(
                        400,
                        f"input {tensor.name!r}: shape {_shape_text(got)} "
                        f"does not match the model's {_shape_text(shape)}",
                    )
            feeds[tensor.name] = self.prepare(tensor.name, tensor.array)
        return feeds

    def prepare(self, name: str, array: Any) -> Any:
        return array

    def outputs(self, request: InferRequest) -> list[str]:
        """The outputs to return, in the order asked (all of them, in the model's order, by default)."""
        if request.outputs is None:
            return list(self.output_names)
        unknown = [o.name for o in request.outputs if o.name not in self.output_names]
        if unknown:
            raise V2Error(400, f"unknown output {unknown[0]!r}; the model's outputs are {self.output_names}")
        return [o.name for o in request.outputs]

    def infer(self, request: InferRequest) -> list[tuple[str, Any]]:
        feeds = self.feeds(request)
        wanted = self.outputs(request)
        return list(zip(wanted, self.run(feeds, wanted), strict=True))


class OnnxRunner(ModelRunner):
    def __init__(self, client: Any) -> None:
        from cortexd.replica.onnx_predictor import _ort_exception

        super().__init__(dict(client.input_signature), list(client.output_names))
        self._session = client.session
        self._invalid: type[BaseException] = _ort_exception("InvalidArgument")

    def prepare(self, name: str, array: Any) -> Any:
        import numpy as np

        if array.dtype.kind != "O":
            return array
        # onnxruntime takes str elements for a string tensor; bytes would arrive as "b'..'"
        out = np.empty(array.shape, dtype=object)
        try:
            out.reshape(-1)[:] = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        except UnicodeDecodeError:
            raise V2Error(
                400, f"input {name!r}: the model takes text, the data holds bytes that are not UTF-8"
            ) from None
        return out

    def run(self, feeds: dict[str, Any], wanted: list[str]) -> list[Any]:
        try:
            return list(self._session.run(wanted, feeds))
        except self._invalid as exc:
            raise V2Error(400, f"the model rejected the inputs: {exc}") from None


class TensorFlowRunner(ModelRunner):
    def __init__(self, client: Any) -> None:
        names = sorted(client.describe().get("outputs", []), key=lambda o: o["name"])
        super().__init__(dict(client.input_signature), [o["name"] for o in names])
        self._client = client

    def run(self, feeds: dict[str, Any], wanted: list[str]) -> list[Any]:
        from cortexd.replica.predictors import PayloadError

        try:
            outputs = self._client.run(feeds)
        except PayloadError as exc:
            raise V2Error(400, str(exc)) from None
        return [outputs[name] for name in wanted]


def runner_for(client: Any) -> ModelRunner | None:
    """The runner for a predictor's model client (ONNXClient, TensorFlowClient), else None."""
    if client is None:
        return None
    from cortexd.replica.onnx_predictor import ONNXClient

    if isinstance(client, ONNXClient):
        return OnnxRunner(client)
    from cortexd.replica.tf_predictor import TensorFlowClient

    if isinstance(client, TensorFlowClient):
        return TensorFlowRunner(client)
    return None
