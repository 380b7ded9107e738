"""Loading user predictors inside a replica process.

Three kinds share one shape (`Predictor`): python (the seed's module form and the class
form), onnx and tensorflow. The onnx and tensorflow loaders live in their own modules and
are imported lazily, so a Python replica never pays for onnxruntime or TensorFlow. The
spec's `call` says which Cortex era's interface the user's code follows: v0.11's modules
(v011.py), the classes of v0.12+ (conventions.py), or the seed's forms (here).

A predictor may also have `wants` (which of query_params / headers it takes) and
`predict_request(payload, query, headers)`; the replica gathers those only when asked. With
server-side batching, one of the v0.17+ form also has `predict_batch(payloads, queries,
headers)` (cortexd/replica/calls.py).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable
from typing import Any, Protocol

from cortexd.callconv import CALL_MODULE, CALL_V011
from cortexd.protocol import ReplicaSpec
from cortexd.replica.packages import missing_package_hint


class PayloadError(Exception):
    """The request payload does not fit the model: the proxy answers 400 with the message."""


class PredictorLoadError(Exception):
    """The predictor cannot be loaded; the message names the file and what was expected."""


class BatchFailed(Exception):
    """A batch failed in a way that is no one payload's fault (every request of it answered 500)."""


def split_predictions(result: Any, count: int) -> list[Any]:
    """The per-request predictions of what a batched Python predict returned: a list, a tuple
    or a numpy array (split along its first axis) of `count` predictions, in order. Anything
    else raises BatchFailed saying what came back (docs/batching.md)."""
    what = "predict takes a list of payloads when server_side_batching is on and must return a list"
    if isinstance(result, (list, tuple)):
        items = list(result)
    else:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(result, np.ndarray) and result.ndim >= 1:
            items = list(result)
        else:
            got = "None" if result is None else type(result).__name__
            raise BatchFailed(f"{what} with one prediction per payload, in order; it returned {got}")
    if len(items) != count:
        raise BatchFailed(
            f"{what} with one prediction per payload, in order; it returned {len(items)} predictions "
            f"for a batch of {count}"
        )
    return items


class Predictor(Protocol):
    def predict(self, payload: Any) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


def import_predictor_file(path: str, python_path: str) -> types.ModuleType:
    """Import a predictor file as a module, with python_path first on sys.path."""
    if python_path and python_path not in sys.path:
        sys.path.insert(0, python_path)
    if not os.path.isfile(path):
        raise PredictorLoadError(f"{path}: predictor file not found")
    name = "cortex_predictor_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PredictorLoadError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's import-time code: report it, never crash loudly elsewhere
        hint = missing_package_hint(exc)
        raise PredictorLoadError(
            f"{path}: importing the predictor failed: {type(exc).__name__}: {exc}" + (f"; {hint}" if hint else "")
        ) from exc
    return module


def _positional_params(func: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _accepts(func: Callable[..., Any], count: int) -> bool:
    """Whether func can be called with `count` positional arguments."""
    try:
        inspect.signature(func).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def construct_user_class(
    module: types.ModuleType,
    class_name: str,
    client: Any,
    config: dict[str, Any],
    client_arg_names: tuple[str, ...],
) -> Any:
    """Find `class_name` in the predictor module, check its signatures and instantiate it.

    With a client (onnx/tensorflow) the constructor is `__init__(self, <client>, config)`;
    without one (python class form) it is `__init__(self, config)`. The client is passed
    by keyword when the user named it as one of `client_arg_names` (e.g. `tf_client`).
    """
    path = getattr(module, "__file__", "?")
    cls = getattr(module, class_name, None)
    expected_init = (
        f"__init__(self, {client_arg_names[0]}, config)" if client_arg_names else "__init__(self, config)"
    )
    expected = f"a class {class_name} with {expected_init} and predict(self, payload)"
    if not inspect.isclass(cls):
        raise PredictorLoadError(f"{path}: expected {expected}; no class {class_name} found")
    predict = getattr(cls, "predict", None)
    if not callable(predict):
        raise PredictorLoadError(f"{path}: expected {expected}; {class_name} has no predict method")
    if not _accepts(predict, 2):
        raise PredictorLoadError(f"{path}: expected {expected}; {class_name}.predict{inspect.signature(predict)}")
    init_params = _positional_params(cls.__init__)[1:]  # drop self
    args: list[Any] = [client, config] if client_arg_names else [config]
    if not _accepts(cls.__init__, len(args) + 1):
        raise PredictorLoadError(
            f"{path}: expected {expected}; {class_name}.__init__{inspect.signature(cls.__init__)}"
        )
    kwargs: dict[str, Any] = {}
    if client_arg_names and init_params and init_params[0].name in client_arg_names:
        kwargs = {init_params[0].name: client, (init_params[1].name if len(init_params) > 1 else "config"): config}
        args = []
    try:
        return cls(*args, **kwargs)
    except Exception as exc:
        hint = missing_package_hint(exc)
        raise PredictorLoadError(
            f"{path}: {class_name}.__init__ raised {type(exc).__name__}: {exc}" + (f"; {hint}" if hint else "")
        ) from exc


class _ModulePredictor:
    """The seed's form: module-level predict(sample, metadata) and optional init(metadata)."""

    def __init__(self, module: types.ModuleType, metadata: dict[str, Any]) -> None:
        self.module = module  # module-level settings (v2_input) are read from it
        self._predict = module.predict
        self._metadata = metadata

    def predict(self, payload: Any) -> Any:
        return self._predict(payload, self._metadata)

    def describe(self) -> dict[str, Any]:
        return {}


class UserPredictor:
    """A user's predictor instance (PythonPredictor, ONNXPredictor, TensorFlowPredictor).

    `describe` comes from the model's client, so GET <endpoint> still lists the model's
    inputs and outputs when the user wraps it in a class of their own. `client` is that
    model client (ONNX/TensorFlow), which the V2 endpoint runs directly (cortexd/v2).
    """

    def __init__(self, instance: Any, describe: Callable[[], dict[str, Any]] = dict, client: Any = None) -> None:
        self.predict: Callable[[Any], Any] = instance.predict  # bound once: no lookups per request
        self.describe = describe
        self.instance = instance
        self.client = client


def load_python_predictor(ctx: ReplicaSpec) -> Predictor:
    if not ctx.predictor_path:
        raise PredictorLoadError(f"api {ctx.api_name}: python.predictor is required")
    module = import_predictor_file(ctx.predictor_path, ctx.python_path)
    path = ctx.predictor_path
    if ctx.call != CALL_MODULE:   # the classes of Cortex v0.12 and later
        from cortexd.replica.conventions import user_class

        found: Predictor = user_class(module, ctx, {}, dict)
        return found
    if hasattr(module, "PythonPredictor"):
        return UserPredictor(construct_user_class(module, "PythonPredictor", None, ctx.config, ()))
    predict = getattr(module, "predict", None)
    if not callable(predict):
        raise PredictorLoadError(
            f"{path}: expected a function predict(sample, metadata) (and optionally init(metadata)), "
            "or a class PythonPredictor with __init__(self, config) and predict(self, payload)"
        )
    if not _accepts(predict, 2):
        raise PredictorLoadError(
            f"{path}: expected predict(sample, metadata); found predict{inspect.signature(predict)}"
        )
    init = getattr(module, "init", None)
    if init is not None:
        if not callable(init) or not _accepts(init, 1):
            raise PredictorLoadError(f"{path}: expected init(metadata); found init{inspect.signature(init)}")
        try:
            init(ctx.config)
        except Exception as exc:
            hint = missing_package_hint(exc)
            raise PredictorLoadError(
                f"{path}: init(metadata) raised {type(exc).__name__}: {exc}" + (f"; {hint}" if hint else "")
            ) from exc
    return _ModulePredictor(module, ctx.config)


def load_predictor(ctx: ReplicaSpec) -> Predictor:
    # The API's `env` is set before any of the user's code (or TensorFlow) is imported.
    os.environ.update(ctx.env)
    if ctx.gpus and ctx.gpu_mem:
        # Before the predictor's own imports: torch or TensorFlow get the limit as they load.
        from cortexd.replica.gpu_limits import limit_frameworks

        limit_frameworks(ctx.gpu_mem)
    if ctx.call == CALL_V011:
        from cortexd.replica import v011

        loaded: Predictor = v011.load(ctx)
        return loaded
    if ctx.kind == "python":
        return load_python_predictor(ctx)
    if ctx.kind == "onnx":
        from cortexd.replica import onnx_predictor

        return onnx_predictor.load(ctx)
    if ctx.kind == "tensorflow":
        from cortexd.replica import tf_predictor

        return tf_predictor.load(ctx)
    raise PredictorLoadError(f"api {ctx.api_name}: unknown predictor kind {ctx.kind!r}")
