"""Iris classifier in the Cortex ONNX form: the client runs iris.onnx, this class names the class."""

labels = ["setosa", "versicolor", "virginica"]


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        sample = [
            payload["sepal_length"],
            payload["sepal_width"],
            payload["petal_length"],
            payload["petal_width"],
        ]
        # one sample for an input of shape [N, 4]: the client adds the batch axis
        label, _probabilities = self.client.predict(sample)
        return labels[int(label[0])]
