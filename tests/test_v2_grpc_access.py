"""The gRPC port's access rules as decisions, and its TLS on a real grpc.aio server in this
process (cortexd/daemon/serving/v2_backend.py, cortexd/v2/grpc_service.py). The same rules
through a real daemon: tests/test_v2_security_daemon.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cortexd.daemon.serving.access import AccessConfigError
from cortexd.daemon.serving.v2_backend import grpc_credentials, grpc_needs_key
from cortexd.v2 import grpc_service
from cortexd.v2.pb import inference_pb2 as pb
from cortexd.v2.pb import inference_pb2_grpc as pb_grpc
from tests.test_security_access import self_signed
from tests.v2_harness import LoopbackBackend, LoopThread

SERVICE = "/inference.GRPCInferenceService/"


@pytest.mark.parametrize(
    "method, keys_on, needed",
    [
        (SERVICE + "ServerLive", True, False),  # probes carry no key, as on /healthz and /v2/health/*
        (SERVICE + "ServerReady", True, False),
        (SERVICE + "ModelReady", True, True),
        (SERVICE + "ServerMetadata", True, True),
        (SERVICE + "ModelMetadata", True, True),
        (SERVICE + "ModelInfer", True, True),
        (SERVICE + "RepositoryIndex", True, True),  # UNIMPLEMENTED, but only for who has a key
        ("/other.Service/ServerLive", True, True),
        (SERVICE + "serverlive", True, True),  # method names are exact
        (SERVICE + "ModelInfer", False, False),  # no --api-keys: all open
    ],
)
def test_grpc_needs_key(method: str, keys_on: bool, needed: bool) -> None:
    assert grpc_needs_key(method, keys_on) is needed


def test_grpc_credentials_without_tls_is_none() -> None:
    assert grpc_credentials(None, None) is None
    assert grpc_credentials("", "") is None


@pytest.mark.parametrize(
    "which, message",
    [
        ("cert-only", "--tls-cert and --tls-key go together"),
        ("key-missing", "{key}: no such file"),
        ("cert-missing", "{cert}: no such file"),
        ("key-not-pem", "{key}: not a PEM file"),
        ("key-a-folder", "{key}: cannot read it"),
    ],
)
def test_grpc_credentials_errors_name_the_file(tmp_path: Path, which: str, message: str) -> None:
    cert, key = self_signed(tmp_path)
    args: tuple[str | None, str | None]
    if which == "cert-only":
        args = (cert, None)
    elif which == "key-missing":
        key = str(tmp_path / "nope.key")
        args = (cert, key)
    elif which == "cert-missing":
        cert = str(tmp_path / "nope.pem")
        args = (cert, key)
    elif which == "key-not-pem":
        Path(key).write_text("not a key\n")
        args = (cert, key)
    else:
        key = str(tmp_path)
        args = (cert, key)
    with pytest.raises(AccessConfigError) as err:
        grpc_credentials(*args)
    assert message.format(cert=cert, key=key) in str(err.value)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


def live(channel: grpc.Channel) -> Any:
    return pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)


def test_serve_with_credentials_speaks_tls_and_refuses_plaintext(tmp_path: Path, loop: LoopThread) -> None:
    cert, key = self_signed(tmp_path)
    server, port = loop.call(grpc_service.serve(LoopbackBackend(), "127.0.0.1", 0,
                                                credentials=grpc_credentials(cert, key)))
    try:
        target = f"127.0.0.1:{port}"
        trusted = grpc.ssl_channel_credentials(root_certificates=Path(cert).read_bytes())
        with grpc.secure_channel(target, trusted) as channel:
            assert live(channel).live
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
            live(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        (tmp_path / "other").mkdir()
        other_cert, _ = self_signed(tmp_path / "other")
        untrusted = grpc.ssl_channel_credentials(root_certificates=Path(other_cert).read_bytes())
        with grpc.secure_channel(target, untrusted) as channel, pytest.raises(grpc.RpcError) as err:
            live(channel)  # a certificate the client does not trust: refused by the client
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loop.call(server.stop(0))


def test_serve_without_credentials_stays_plaintext(loop: LoopThread) -> None:
    server, port = loop.call(grpc_service.serve(LoopbackBackend(), "127.0.0.1", 0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert live(channel).live
    finally:
        loop.call(server.stop(0))
