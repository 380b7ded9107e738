"""Iris classifier in the PythonPredictor form of the Cortex reference pages.

As in the reference examples, the model file is read by a path relative to the project;
replicas run in a writable copy of the project, so training on first start (when the
pickle is missing) writes model.pkl there without touching your folder.
"""

import os
import pickle

from voluptuous import All, Coerce, MultipleInvalid, Range, Required, Schema

labels = ["setosa", "versicolor", "virginica"]

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

# Accepts numbers or numeric strings ("5.1"), rejects missing keys and nonsense with a
# message that names the field, instead of a numpy traceback.
measurement = All(Coerce(float), Range(min=0, max=100))
payload_schema = Schema({Required(name): measurement for name in FEATURES}, extra=True)


class PythonPredictor:
    def __init__(self, config):
        model_path = config.get("model", "model.pkl")
        if not os.path.exists(model_path):
            import train  # train.py sits next to this file, on the API's python_path

            accuracy = train.train(model_path)
            print(f"{model_path} was missing: trained a new model (test accuracy {accuracy:.3f})")
        with open(model_path, "rb") as handle:
            self.model = pickle.load(handle)

    def predict(self, payload):
        try:
            sample = payload_schema(payload)
        except MultipleInvalid as exc:
            problems = "; ".join(sorted(str(error) for error in exc.errors))
            raise ValueError(f"invalid payload: {problems}") from None
        measurements = [[sample[name] for name in FEATURES]]
        label_id = self.model.predict(measurements)[0]
        return labels[int(label_id)]
