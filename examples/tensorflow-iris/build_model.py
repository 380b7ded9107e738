"""Build the TensorFlow iris SavedModel into model/1/ (a folder of numbered versions).

A logistic regression trained on scikit-learn's bundled iris data (nothing downloaded), wrapped
in a tf.Module whose serving_default signature takes the four measurements by name:

    sepal_length, sepal_width, petal_length, petal_width   float32 [N]
    -> class_ids int64 [N] (0 setosa, 1 versicolor, 2 virginica), probabilities float32 [N, 3]

Run: python examples/tensorflow-iris/build_model.py [--new-version] [OUT_DIR]
(default OUT_DIR: model/ next to this file). Without --new-version an existing model is left as
it is (so `make examples` is cheap and changes nothing); with it the next version number is
written, and a running API serves it after `cortexd reload`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def build(out: str, new_version: bool = False) -> str:
    """Write the model into out/<version>/ and return that folder (or the existing highest one)."""
    existing = [int(n) for n in os.listdir(out) if n.isdigit()] if os.path.isdir(out) else []
    if existing and not new_version:
        return os.path.join(out, str(max(existing)))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    iris = load_iris()
    fitted = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    coef = np.ascontiguousarray(fitted.coef_.T, dtype=np.float32)
    intercept = fitted.intercept_.astype(np.float32)

    class Iris(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.coef = tf.Variable(coef, trainable=False)
            self.intercept = tf.Variable(intercept, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=name) for name in FEATURES])
        # tf.function traces the arguments (tf.Tensor): no Python annotations to check
        def serve(self, sepal_length, sepal_width, petal_length, petal_width):  # type: ignore[no-untyped-def]
            x = tf.stack([sepal_length, sepal_width, petal_length, petal_width], axis=1)
            logits = tf.matmul(x, self.coef) + self.intercept
            return {"class_ids": tf.argmax(logits, axis=1), "probabilities": tf.nn.softmax(logits)}

    module = Iris()
    target = os.path.join(out, str(max(existing, default=0) + 1))
    tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
    print(f"wrote {target} (training accuracy {fitted.score(iris.data, iris.target):.3f})")
    return target


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--new-version"]
    out = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "model")
    new_version = "--new-version" in sys.argv[1:]
    existed = os.path.isdir(out) and any(n.isdigit() for n in os.listdir(out))
    target = build(out, new_version)
    if existed and not new_version:
        print(f"{target} exists; pass --new-version to write another")


if __name__ == "__main__":
    main()
