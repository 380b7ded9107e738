"""Train the iris classifier and pickle it next to this file (or where --output says).

    python train.py            # writes model.pkl
    python train.py -o m.pkl
    python train.py --upload s3://cortex-examples/sklearn/iris-classifier/model.pkl   # for from-s3/

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
    parser.add_argument("--upload", metavar="S3_URL", help="also upload the pickle there (AWS_* settings apply)")
    args = parser.parse_args()
    accuracy = train(args.output)
    print(f"wrote {args.output} (test accuracy {accuracy:.3f})")
    if args.upload:
        upload(args.output, args.upload)
        print(f"uploaded to {args.upload}")


def upload(path: str, url: str) -> None:
    """Put the pickle where from-s3/predictor.py downloads it (s3://bucket/key)."""
    import boto3  # only this step needs it; AWS_ENDPOINT_URL selects an S3-compatible store

    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket or not key:
        raise SystemExit(f"--upload {url!r}: expected s3://bucket/key")
    boto3.client("s3").upload_file(path, bucket, key)


if __name__ == "__main__":
    main()
