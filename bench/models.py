"""The two benchmark models, made locally with onnx.helper and a fixed seed.

- "tiny": MLP 4 -> 16 -> 3 (Relu between), a few microseconds of compute: the request
  path's overhead dominates, so it shows what the HTTP stack and the proxy cost.
- "mlp": MLP 256 -> 1024 -> 1024 -> 10, about 1.3 M multiply-adds per sample: compute
  starts to matter, so it shows how much of a real model's time the proxy adds.

Both take `input` float32 [1, features] (one sample per request; a client posts the flat
list and the server adds the batch axis) and give `output` float32 [1, classes] plus `label`,
the argmax as an int64 scalar, so a tracker (classification, key "label") has a value to
count. Opset 17, IR 8, so any onnxruntime >= 1.15 loads them.

For the server-side batching cells, `build_model(..., batchable=True)` writes the same
weights with a dynamic first dimension: `input` [N, features] -> `output` [N, classes],
`label` int64 [N] (a batch is stacked along N); `save_weights` writes them as .npz for the
Python predictor that runs the MLP in numpy (bench/numpy_predictor.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import pairwise

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


def weights(spec: ModelSpec, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) per layer, from the fixed seed: the same numbers for every form of the model."""
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in pairwise(spec.layers):
        # He-style scaling keeps activations in a sane range through the layers.
        w = (rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.normal(size=(fan_out,)) * 0.01).astype(np.float32)
        out.append((w, b))
    return out


def save_weights(spec: ModelSpec, path: str, seed: int = SEED) -> str:
    """The weights as an .npz (W0, B0, W1, ...) for bench/numpy_predictor.py."""
    arrays = {}
    for i, (w, b) in enumerate(weights(spec, seed)):
        arrays[f"W{i}"], arrays[f"B{i}"] = w, b
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def build_model(spec: ModelSpec, path: str, seed: int = SEED, batchable: bool = False) -> str:
    """Write spec's MLP to `path` (Gemm + Relu per hidden layer, Gemm at the end); batchable:
    a dynamic first dimension and a per-sample label (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    current = "input"
    layers = weights(spec, seed)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(layers) - 1
        out = "output" if last else f"h{i}"
        gemm_out = out if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    if batchable:  # label = argmax per sample: [N]
        nodes.append(helper.make_node("ArgMax", ["output"], ["label"], axis=1, keepdims=0))
        batch: str | int = "N"
        label_shape: list[str | int] = ["N"]
    else:
        # label = argmax(output) as a scalar: ArgMax gives [1], Reshape to shape [] drops the axis.
        nodes.append(helper.make_node("ArgMax", ["output"], ["label1"], axis=1, keepdims=0))
        nodes.append(helper.make_node("Reshape", ["label1", "scalar_shape"], ["label"]))
        inits.append(numpy_helper.from_array(np.zeros((0,), dtype=np.int64), "scalar_shape"))
        batch, label_shape = 1, []
    graph = helper.make_graph(
        nodes,
        spec.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, spec.layers[0]])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, spec.layers[-1]]),
            helper.make_tensor_value_info("label", TensorProto.INT64, label_shape),
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
    """Build every model (once: an existing file is reused) and its sample body; name -> .onnx path.

    Next to each <name>.onnx: <name>-batch.onnx (batchable) and <name>.npz (its weights)."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, spec in MODELS.items():
        path = os.path.join(folder, f"{name}.onnx")
        if not os.path.exists(path):
            build_model(spec, path)
        batch_path = os.path.join(folder, f"{name}-batch.onnx")
        if not os.path.exists(batch_path):
            build_model(spec, batch_path, batchable=True)
        npz = os.path.join(folder, f"{name}.npz")
        if not os.path.exists(npz):
            save_weights(spec, npz)
        with open(os.path.join(folder, f"{name}.json"), "wb") as f:
            f.write(sample_body(spec))
        paths[name] = path
    return paths
