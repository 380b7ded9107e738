"""Iris classifier in PyTorch, trained at start-up, on the GPU when the replica has one.

cortexd gives a replica with `gpu:` its card in CUDA_VISIBLE_DEVICES, so "cuda" here is that
card (or its share of it); a replica without a GPU sees none and trains on the CPU. With
`gpu_mem`, cortexd has already capped PyTorch's allocator at it when `import torch` returns.

POST one sample, {"sepal_length": 5.2, ...}, for its class; or a list of samples for a list.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_iris

LABELS = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class PythonPredictor:
    def __init__(self, config):
        started = time.monotonic()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(int(config.get("seed", 0)))
        iris = load_iris()
        x = torch.tensor(iris.data, dtype=torch.float32, device=self.device)
        y = torch.tensor(iris.target, dtype=torch.long, device=self.device)
        self.mean, self.std = x.mean(0), x.std(0)
        hidden = int(config.get("hidden", 16))
        self.model = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, len(LABELS))
        ).to(self.device)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        for _ in range(int(config.get("epochs", 200))):  # full batch: 150 rows
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(self._scale(x)), y)
            loss.backward()
            optimizer.step()
        self.model.eval()
        with torch.inference_mode():
            accuracy = (self.model(self._scale(x)).argmax(1) == y).float().mean().item()
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        print(f"pytorch-iris: trained on {self.device} ({where}) in {time.monotonic() - started:.1f}s, "
              f"training accuracy {accuracy:.2f}", flush=True)

    def _scale(self, x):
        return (x - self.mean) / self.std

    def predict(self, payload):
        samples = payload if isinstance(payload, list) else [payload]
        rows = [[float(sample[name]) for name in FEATURES] for sample in samples]
        with torch.inference_mode():
            x = torch.tensor(rows, dtype=torch.float32, device=self.device)
            classes = self.model(self._scale(x)).argmax(1).tolist()
        labels = [LABELS[c] for c in classes]
        return labels if isinstance(payload, list) else labels[0]
