"""Iris classifier in the seed's form: init(metadata) trains once, predict(sample, metadata) answers.

The model is trained at init on scikit-learn's bundled iris data, so nothing is downloaded.
"""

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

labels = ["setosa", "versicolor", "virginica"]
model = None


def init(metadata):
    global model
    iris = load_iris()
    model = LogisticRegression(max_iter=int(metadata.get("max_iter", 500)))
    model.fit(iris.data, iris.target)


def predict(sample, metadata):
    features = np.array(
        [[sample["sepal_length"], sample["sepal_width"], sample["petal_length"], sample["petal_width"]]],
        dtype=np.float64,
    )
    return labels[int(model.predict(features)[0])]
