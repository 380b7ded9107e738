"""How a replica calls the user's code: one name per era of Cortex's predictor interface.

Shared by the configuration (which decides it from the file's dialect) and the replica
(which follows it); kept here so that a replica does not import the config package.
"""
from __future__ import annotations

CALL_MODULE = "module"              # seed: predict(sample, metadata), optional init(metadata); or the classes
# v0.11: init(model_path, metadata) / predict(sample, metadata); request_handler for onnx/tf
CALL_V011 = "v0.11"
CALL_CLASS = "class"                # v0.12-v0.16: PythonPredictor(config) ...; predict(self, payload)
CALL_CLASS_KWARGS = "class-kwargs"  # v0.17-v0.33: predict(self, payload?, query_params?, headers?) by name
CALL_HANDLER = "handler"            # v0.34-v0.35: class Handler, handle_post(self, payload?, query_params?, headers?)
CALLS: tuple[str, ...] = (CALL_MODULE, CALL_V011, CALL_CLASS, CALL_CLASS_KWARGS, CALL_HANDLER)
