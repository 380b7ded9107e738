"""The two benchmark models, made locally with onnx.helper and a fixed seed.

- "tiny": MLP 4 -> 16 -> 3 (Relu between), a few microseconds of compute: the request
  path's overhead dominates, so it shows what the HTTP stack and the proxy cost.
- "mlp": MLP 256 -> 1024 -> 1024 -> 10, about 1.3 M multiply-adds per sample: compute
  starts to matter, so it shows how much of a real model's time the proxy adds.

Both take `input` float32 [1, features] (one sample per request; a client posts the flat
list and the server adds the batch axis) and give `output` float32 [1, classes] plus `label`,
the argmax as an int64 scalar, so a tracker (classification, key "label") has a value to
count. Opset 17, IR 8, so any onnxruntime >= 1.15 loads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

SEED = 20240611
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[int, ...]  # widths: input, hidden..., output

    @property
    def features(self) -> int:
        return self.layers[0]


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", (4, 16, 3)),
    "mlp": ModelSpec("mlp", (256, 1024, 1024, 10)),
}


def build_model(spec: ModelSpec, path: str, seed: int = SEED) -> str:
    """Write spec's MLP to `path` (Gemm + Relu per hidden layer, Gemm at the end)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    current = "input"
    pairs = list(zip(spec.layers[:-1], spec.layers[1:]))
    for i, (fan_in, fan_out) in enumerate(pairs):
        # He-style scaling keeps activations in a sane range through the layers.
        w = (rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.normal(size=(fan_out,)) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(pairs) - 1
        out = "output" if last else f"h{i}"
        gemm_out = out if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    # label = argmax(output) as a scalar: ArgMax gives [1], Reshape to shape [] drops the axis.
    nodes.append(helper.make_node("ArgMax", ["output"], ["label1"], axis=1, keepdims=0))
    nodes.append(helper.make_node("Reshape", ["label1", "scalar_shape"], ["label"]))
    inits.append(numpy_helper.from_array(np.zeros((0,), dtype=np.int64), "scalar_shape"))
    graph = helper.make_graph(
        nodes,
        spec.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, spec.layers[0]])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, spec.layers[-1]]),
            helper.make_tensor_value_info("label", TensorProto.INT64, []),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cortexd-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return path


def sample(spec: ModelSpec, seed: int = SEED) -> list[float]:
    """One sample: the payload a client posts (a flat list; the server adds the batch axis)."""
    rng = np.random.default_rng(seed + 1)
    return [round(float(x), 4) for x in rng.normal(size=spec.features)]


def sample_body(spec: ModelSpec) -> bytes:
    return json.dumps(sample(spec)).encode()


def build_all(folder: str) -> dict[str, str]:
    """Build every model (once: an existing file is reused) and its sample body; name -> .onnx path."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, spec in MODELS.items():
        path = os.path.join(folder, f"{name}.onnx")
        if not os.path.exists(path):
            build_model(spec, path)
        with open(os.path.join(folder, f"{name}.json"), "wb") as f:
            f.write(sample_body(spec))
        paths[name] = path
    return paths
