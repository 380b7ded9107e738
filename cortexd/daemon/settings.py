"""The daemon's settings: each declared once, with its default, its `serve` flag and help.

`cortexd serve --help`, the daemon and docs/cli.md all read these rows; nothing
else writes a default down.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cortexd import paths
from cortexd.config.bounds import DEFAULT_MAX_REPLICAS
from cortexd.config.quantities import parse_mem
from cortexd.daemon.fleet.failures import STOP_GRACE_S


def _setting(
    default: Any, flag: str, help: str, parse: Callable[[str], Any] | None = None, metavar: str | None = None,
    shown: str | None = None, choices: tuple[str, ...] | None = None,
) -> Any:
    """A field with its flag; `shown` is the default as --help writes it (None: the value)."""
    meta = {"flag": flag, "help": help, "parse": parse, "metavar": metavar, "shown": shown, "choices": choices}
    return field(default=default, metadata=meta)


def _mem(text: str) -> int:
    try:
        return parse_mem(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mem_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _mem(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


@dataclass
class DaemonSettings:
    # Paths: "" means the default for this user (systemd's directories, root's, or per-user).
    config: str = _setting("", "--config", "the cortex.yaml to serve (default: /etc/cortexd/cortex.yaml as root, "
                           "else ./cortex.yaml)")
    host: str = _setting("0.0.0.0", "--host", "address the HTTP port listens on")
    port: int = _setting(8888, "--port", "the HTTP port", int)
    state_dir: str = _setting("", "--state-dir", "versions, environments, model cache and tracker.db")
    runtime_dir: str = _setting("", "--runtime-dir", "control socket and replica sockets (env CORTEXD_RUNTIME_DIR)")
    log_dir: str = _setting("", "--log-dir", "one log file per API")
    autoscale_period_s: float = _setting(15.0, "--autoscale-period", "seconds between autoscaling decisions", float)
    downscale_window_s: float = _setting(300.0, "--downscale-window", "seconds of stabilisation before scaling down",
                                         float)
    request_timeout_s: float = _setting(60.0, "--request-timeout", "seconds a request may wait and run; a replica "
                                        "that has not answered by then is replaced", float)
    max_queue: int = _setting(1024, "--max-queue", "requests waiting per API before 503", int)
    max_body_bytes: int = _setting(32 * 1024 * 1024, "--max-body", "largest request body (413 above it)",
                                   _mem, "SIZE", "32Mi")
    max_connections: int = _setting(0, "--max-connections", "open client connections before new ones get 503 "
                                    "(default: from the open-file limit)", int)
    header_timeout_s: float = _setting(10.0, "--header-timeout", "seconds a client has to send a request's headers",
                                       float)
    drain_timeout_s: float = _setting(30.0, "--drain-timeout", "seconds to finish requests on stop", float)
    # A replica is a process: without a cap, a file of many APIs asking `cpu: 1m` each would have
    # the daemon fork thousands (cpu/mem admission alone admits them). Beyond it replicas wait as
    # `compute unavailable`, like a replica whose cpu does not fit.
    max_replicas: int = _setting(DEFAULT_MAX_REPLICAS, "--max-replicas", "replica processes the daemon runs at "
                                 "once, all APIs together; more wait as compute unavailable", _positive, "N")
    prepare_timeout_s: float = _setting(900.0, "--prepare-timeout", "seconds an API's model fetch and environment "
                                        "build may take before it is `error`", float)
    # Access and TLS (docs/security.md); checked at start, exit 2 when they cannot be used.
    api_keys: str = _setting("", "--api-keys", "require one of these keys (one per line) on predictions: "
                             "Authorization: Bearer KEY or X-API-Key; re-read at every reload (default: off)")
    api_keys_metrics: str = _setting("protected", "--api-keys-metrics", "whether /readyz and /metrics need a key "
                                     "too", choices=("protected", "open"), metavar="protected|open")
    debug_from: str = _setting("", "--debug-from", "also honour ?debug=true from these addresses (default: "
                               "loopback only; none: from no address)", metavar="CIDR,...")
    cors_origins: str = _setting("*", "--cors-origins", "origins browsers may call the endpoints from (none: no "
                                 "CORS headers)", metavar="ORIGIN,...")
    tls_cert: str = _setting("", "--tls-cert", "serve HTTPS (and gRPC over TLS) with this PEM "
                              "certificate (default: HTTP)")
    tls_key: str = _setting("", "--tls-key", "the certificate's PEM private key")
    # Model sources (docs/security.md).
    max_model_unpacked: int = _setting(16 << 30, "--max-model-unpacked", "largest total a model archive may "
                                       "unpack to", _mem, "SIZE", "16Gi")
    max_model_unpack_ratio: float = _setting(100.0, "--max-model-unpack-ratio", "refuse model archives that unpack "
                                             "to more than this many times their size", float, "N")
    model_cache_size: int = _setting(20 << 30, "--model-cache-size", "downloaded models kept beyond those the "
                                     "running and previous versions use (0: only those)", _mem_or_zero, "SIZE",
                                     "20Gi")
    grpc_port: int = _setting(0, "--grpc-port", "serve the Open Inference Protocol over gRPC on this port "
                              "(default: off)", int, "PORT")
    # Not flags: fixed by the unit's timeouts and the reload protocol.
    reload_timeout_s: float = 600.0  # how long `cortexd reload` waits for new replicas
    stop_grace_s: float = STOP_GRACE_S  # SIGTERM, then SIGKILL

    def resolved(self) -> DaemonSettings:
        """Absolute paths, defaults for this user filled in."""
        return dataclasses.replace(
            self,
            config=os.path.abspath(self.config or paths.default_config()),
            state_dir=os.path.abspath(self.state_dir or paths.default_state_dir()),
            runtime_dir=os.path.abspath(self.runtime_dir or paths.default_runtime_dir()),
            log_dir=os.path.abspath(self.log_dir or paths.default_log_dir()),
        )


def flag_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(DaemonSettings) if "flag" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for f in flag_fields():
        if f.name in skip:
            continue
        meta = f.metadata
        default = f.default
        shown = meta["shown"] or (str(default) if default not in ("", 0, None) else "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": default,
                                  "help": meta["help"] + (f" (default: {shown})" if shown else "")}
        if meta["parse"] is not None:
            kwargs["type"] = meta["parse"]
        kwargs["metavar"] = meta["metavar"] or {float: "SECONDS", int: "N"}.get(meta["parse"], "PATH")
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if f.name in ("host",):
            kwargs["metavar"] = "ADDRESS"
        parser.add_argument(meta["flag"], **kwargs)


def from_args(args: argparse.Namespace) -> DaemonSettings:
    values = {f.name: getattr(args, f.name) for f in flag_fields() if hasattr(args, f.name)}
    return DaemonSettings(**values).resolved()
