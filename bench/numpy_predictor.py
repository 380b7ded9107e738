"""The bench's Python predictor: the bench MLP in numpy, on the whole batch at once.

Seed form (`predict(sample, metadata)`); `metadata.weights` is the model's .npz
(bench/models.py save_weights). Without server-side batching `sample` is one sample, the
flat list of features; with it, the list of the batch's samples, and one matrix product per
layer serves them all: the case where batching pays in a Python predictor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_layers: list[tuple[np.ndarray, np.ndarray]] = []


def init(metadata: dict[str, Any]) -> None:
    data = np.load(metadata["weights"])
    _layers[:] = [(data[f"W{i}"], data[f"B{i}"]) for i in range(len(data.files) // 2)]


def _forward(x: np.ndarray) -> np.ndarray:
    for i, (w, b) in enumerate(_layers):
        x = x @ w + b
        if i < len(_layers) - 1:
            np.maximum(x, 0, out=x)
    return x


def predict(sample: Any, metadata: dict[str, Any]) -> Any:
    batched = isinstance(sample, list) and bool(sample) and isinstance(sample[0], list)
    out = _forward(np.asarray(sample if batched else [sample], dtype=np.float32))
    answers = [
        {"output": [row.tolist()], "label": int(label)} for row, label in zip(out, out.argmax(axis=1), strict=True)
    ]
    return answers if batched else answers[0]
