"""A tiny iris classifier: nearest class centroid, no libraries, no model file.

Try it:
    curl -X POST http://localhost:8888/example/iris \
         -H 'Content-Type: application/json' -d @/etc/cortexd/examples/iris/sample.json

Replace it with your own predictor: edit /etc/cortexd/cortex.yaml, then `sudo cortexd reload`.
"""

from __future__ import annotations

import math
from typing import Any

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")

# Mean measurements (cm) of each species in Fisher's iris data set.
CENTROIDS: dict[str, tuple[float, float, float, float]] = {
    "setosa": (5.006, 3.428, 1.462, 0.246),
    "versicolor": (5.936, 2.770, 4.260, 1.326),
    "virginica": (6.588, 2.974, 5.552, 2.026),
}


def init(metadata: dict[str, Any]) -> None:
    """Called once per replica before the first request (nothing to load here)."""


def predict(sample: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The species whose centroid is nearest to the sample's four measurements."""
    missing = [f for f in FEATURES if f not in sample]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; expected {', '.join(FEATURES)}")
    x = [float(sample[f]) for f in FEATURES]
    return min(CENTROIDS, key=lambda label: math.dist(x, CENTROIDS[label]))
