"""Train the iris classifier and pickle it next to this file (or where --output says).

    python train.py            # writes model.pkl
    python train.py -o m.pkl

The predictor runs the same train() when its model file is missing, so a fresh checkout
serves without this step; running it yourself pins the exact model you ship.
"""

from __future__ import annotations

import argparse
import os
import pickle

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def train(output: str = "model.pkl", seed: int = 0) -> float:
    """Fit a logistic regression on the iris data bundled with scikit-learn; return accuracy."""
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=0.2, random_state=seed, stratify=iris.target
    )
    model = LogisticRegression(max_iter=1000)
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    tmp = f"{output}.tmp"
    with open(tmp, "wb") as handle:
        pickle.dump(model, handle)
    os.replace(tmp, output)  # a concurrent reader never sees a half-written pickle
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.pkl"))
    args = parser.parse_args()
    accuracy = train(args.output)
    print(f"wrote {args.output} (test accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
