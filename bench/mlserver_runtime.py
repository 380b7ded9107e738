"""The MLServer peer's runtime (bench/v2.py --target mlserver): the bench's .onnx on
onnxruntime, written the way MLServer's docs write a custom runtime (an MLModel subclass,
tensors decoded and encoded by mlserver.codecs.NumpyCodec).

It runs inside MLServer's own virtual environment (bench/mlserver-venv.sh), not .venv:
bench/mlserver_peer.py copies it next to the model's model-settings.json, where MLServer
imports it from (`"implementation": "mlserver_runtime.OnnxModel"`). The session options are
those of cortexd's replica with `cpu: 500m` (cortexd/replica/onnx_predictor.py): one
intra-op and one inter-op thread, sequential execution, no spinning.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs if i.name in self._inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name, model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results, strict=True)],
        )
