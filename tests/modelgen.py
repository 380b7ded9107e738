"""Small models made by the tests themselves (fixed seeds, nothing downloaded).

ONNX models are built with onnx.helper (opset 17, IR 8, so any onnxruntime >= 1.15 loads
them). TensorFlow models are tiny tf.Modules saved with one or several signatures; tensorflow
is imported only inside the functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8
WEIGHTS_SEED = 7


def linear_weights(features: int = 4, classes: int = 3, seed: int = WEIGHTS_SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(features, classes)).astype(np.float32), rng.normal(size=(classes,)).astype(np.float32)


def linear_scores(rows: Any) -> np.ndarray:
    """What the linear models (onnx_linear, tf_module's classify, tf_batch_model) answer as
    scores for `rows` [n, 4], computed in numpy: compare with a tolerance, never exactly."""
    w, b = linear_weights()
    return np.asarray(rows, dtype=np.float32) @ w + b


def linear_labels(rows: Any) -> list[int]:
    """The labels (argmax of linear_scores) the linear models answer for `rows`."""
    return [int(i) for i in linear_scores(rows).argmax(axis=1)]


def _save_onnx(graph: Any, path: str) -> str:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cortexd-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def onnx_linear(path: str, batch: str | int | None = "N", features: int = 4, classes: int = 3) -> str:
    """input float [batch, features] -> scores float [batch, classes], label int64 [batch].

    scores = input @ W + b with W, b from linear_weights(); label = argmax(scores).
    """
    from onnx import TensorProto, helper, numpy_helper

    w, b = linear_weights(features, classes)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, features])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
        ],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return _save_onnx(graph, path)


def onnx_multi(path: str) -> str:
    """Several inputs of several dtypes.

    a float [N, 3], b int64 [N, 3], scale double [1], flag bool [N]
    -> sum float [N, 3] = (a + b) * scale, not_flag bool [N] = !flag.
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["scale"], ["scale_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_f"], ["ab"]),
            helper.make_node("Mul", ["ab", "scale_f"], ["sum"]),
            helper.make_node("Not", ["flag"], ["not_flag"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("scale", TensorProto.DOUBLE, [1]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("not_flag", TensorProto.BOOL, ["N"]),
        ],
    )
    return _save_onnx(graph, path)


def onnx_strings(path: str) -> str:
    """text string [N] -> same string [N] (Identity): string inputs and outputs."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["N"])],
    )
    return _save_onnx(graph, path)


def tf_module(version: int = 1, signatures: Sequence[str] = ("serving_default",)) -> tuple[Any, dict[str, Any]]:
    """A tiny tf.Module and the signatures to save it with.

    "serving_default" / "classify": x float [None, 4] -> scores float [None, 3], label int64 [None],
        version int32 [] (the number given, so a test can tell which version was loaded)
    "add": a int64 [None], b int64 [None] -> sum int64 [None]
    "echo": text string [None] -> text string [None]
    """
    import tensorflow as tf

    w, b = linear_weights()

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(w)
            self.b = tf.Variable(b)
            self.version = tf.constant(version, dtype=tf.int32)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def classify(self, x: Any) -> dict[str, Any]:
            scores = tf.matmul(x, self.w) + self.b
            return {"scores": scores, "label": tf.argmax(scores, axis=1), "version": self.version}

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.int64, name="a"), tf.TensorSpec([None], tf.int64, name="b")]
        )
        def add(self, a: Any, b: Any) -> dict[str, Any]:
            return {"sum": a + b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def echo(self, text: Any) -> dict[str, Any]:
            return {"text": tf.identity(text)}

    module = Tiny()
    table = {"serving_default": module.classify, "classify": module.classify, "add": module.add, "echo": module.echo}
    return module, {name: table[name] for name in signatures}


def tf_saved_model(path: str, version: int = 1, signatures: Sequence[str] = ("serving_default",)) -> str:
    import tensorflow as tf

    module, sigs = tf_module(version, signatures)
    tf.saved_model.save(module, path, signatures=sigs)
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    return path


def tf_batch_model(path: str, batch: int | None = None) -> str:
    """A SavedModel for server-side batching: serving_default takes x float [batch, 4] and
    gives scores float [batch, 3] and label int64 [batch] (the linear model of linear_weights).
    batch=None is a dynamic first dimension (batchable); a number fixes it."""
    import tensorflow as tf

    w, b = linear_weights()

    class Linear(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(w)
            self.b = tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([batch, 4], tf.float32, name="x")])
        def classify(self, x: Any) -> dict[str, Any]:
            scores = tf.matmul(x, self.w) + self.b
            return {"scores": scores, "label": tf.argmax(scores, axis=1)}

    module = Linear()
    tf.saved_model.save(module, path, signatures={"serving_default": module.classify})
    return path
