"""The Open Inference Protocol (KServe V2): REST, Triton's binary tensors, and gRPC.

Daemon side (no numpy imported):
- backend.py   the seam: `V2Backend`, which the daemon implements, and `ModelEntry`
- rest.py      the REST router: `handle(method, path, headers, body, backend, query)`
- grpc_service.py, grpc_convert.py, pb/   the gRPC GRPCInferenceService over the same backend
- hop.py       the V2 request on the daemon -> replica hop, and its answer on the way back
- metadata.py  server and model metadata

Replica side:
- replica.py   `handle_replica_request` (the replica handler's POST /v2/infer) and `v2_infer`
- codec.py, datatypes.py, model_runner.py   V2 bodies <-> numpy arrays, models run by input name

docs/v2.md is the user's page.
"""
