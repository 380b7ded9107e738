"""Build iris.onnx: a logistic regression trained on scikit-learn's bundled iris data,
written as an ONNX graph with onnx.helper (no converter package needed, nothing downloaded).

    input          float32 [N, 4]  sepal length, sepal width, petal length, petal width (cm)
    label          int64   [N]     0 setosa, 1 versicolor, 2 virginica
    probabilities  float32 [N, 3]

Run from anywhere: python examples/onnx-iris/build_model.py [OUT]  (default: iris.onnx next to this file).
The result is deterministic, so rebuilding it gives the committed file back.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def train() -> LogisticRegression:
    iris = load_iris()
    model = LogisticRegression(max_iter=1000)
    model.fit(iris.data, iris.target)
    return model


def to_onnx(model: LogisticRegression) -> onnx.ModelProto:
    # multinomial logistic regression: probabilities = softmax(x @ coef.T + intercept)
    weights = np.ascontiguousarray(model.coef_.T, dtype=np.float32)
    bias = model.intercept_.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "coef"], ["xw"]),
            helper.make_node("Add", ["xw", "intercept"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "iris",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
        ],
        initializer=[numpy_helper.from_array(weights, "coef"), numpy_helper.from_array(bias, "intercept")],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cortexd-examples")
    onnx_model.ir_version = 8  # loadable by onnxruntime >= 1.15
    onnx.checker.check_model(onnx_model)
    return onnx_model


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "iris.onnx")
    model = train()
    onnx.save(to_onnx(model), out)
    iris = load_iris()
    print(f"wrote {out} (training accuracy {model.score(iris.data, iris.target):.3f})")


if __name__ == "__main__":
    main()
