"""Debug logging, API keys, CORS and TLS as decisions (cortexd/daemon/serving/access.py)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from typing import Any

import pytest

from cortexd.daemon.serving import access
from cortexd.daemon.serving.access import (
    ENDPOINT,
    HEALTHZ,
    METRICS,
    READYZ,
    V2_HEALTH,
    Access,
    AccessConfigError,
    AccessSettings,
    ApiKeys,
)

KEY = "k" * 16 + "-first"
OTHER_KEY = "0123456789abcdef0123"


# ---------------------------------------------------------------- debug


@pytest.mark.parametrize(
    "query, wanted",
    [
        ("", False),
        ("debug=true", True),
        ("debug=TRUE", True),
        ("debug=True&x=1", True),
        ("x=1&debug=true", True),
        ("xdebug=trueish", False),  # the substring trick
        ("debug=trueish", False),
        ("debugx=true", False),
        ("debug=false", False),
        ("debug=", False),
        ("debug", False),
        ("debug=false&debug=true", False),  # the first value counts, as in Cortex's Flask
        ("debug=%74rue", True),  # percent-encoded "true" is "true"
        ("a=debug%3Dtrue", False),
    ],
)
def test_debug_requested(query: str, wanted: bool) -> None:
    assert access.debug_requested(query) is wanted


@pytest.mark.parametrize(
    "debug_from, peer, trusted, allowed",
    [
        ("", "127.0.0.1", False, True),
        ("", "127.8.9.1", False, True),
        ("", "::1", False, True),
        ("", "::ffff:127.0.0.1", False, True),
        ("", "10.1.2.3", False, False),
        ("", "10.1.2.3", True, True),  # cortexd predict --debug
        ("", None, False, False),
        ("", "garbage", False, False),
        ("10.0.0.0/8", "10.1.2.3", False, True),
        ("10.0.0.0/8", "11.1.2.3", False, False),
        ("10.0.0.0/8, 192.168.1.7", "192.168.1.7", False, True),
        ("10.0.0.0/8", "127.0.0.1", False, True),  # loopback stays on
        ("fd00::/8", "fd12::1", False, True),
        ("fd00::/8", "10.1.2.3", False, False),
        ("none", "127.0.0.1", False, False),  # behind a local reverse proxy
        ("none", "127.0.0.1", True, True),
    ],
)
def test_debug_allowed(debug_from: str, peer: str | None, trusted: bool, allowed: bool) -> None:
    assert access.debug_allowed(peer, access.parse_debug_from(debug_from), trusted) is allowed


def test_debug_from_errors_name_the_value() -> None:
    with pytest.raises(AccessConfigError, match=r"--debug-from: '10.0.0/33' is not an address or CIDR"):
        access.parse_debug_from("10.0.0.0/8,10.0.0/33")


@pytest.mark.parametrize(
    "query, peer, upstream, refused",
    [
        ("", "10.0.0.1", "", False),
        ("x=1", "10.0.0.1", "", False),  # the replica never sees the client's query
        ("debug=true", "127.0.0.1", "debug=true", False),
        ("debug=true", "10.0.0.1", "", True),
        ("xdebug=true", "10.0.0.1", "", False),
    ],
)
def test_decide_debug(query: str, peer: str, upstream: str, refused: bool) -> None:
    decision = access.decide_debug(query, peer, access.DebugPolicy())
    assert decision.upstream_query == upstream
    assert (decision.header is not None) is refused
    if refused:
        assert decision.header is not None and decision.header[0] == "X-Cortexd-Debug"
        assert "refused" in decision.header[1]


# ---------------------------------------------------------------- API keys


@pytest.mark.parametrize(
    "text, keys, error",
    [
        (f"{KEY}\n", [KEY], None),
        (f"# ops team\n\n  {KEY}  \n{OTHER_KEY}\n", [KEY, OTHER_KEY], None),
        ("", None, "no keys"),
        ("# only a comment\n", None, "no keys"),
        (f"{KEY}\nshort\n", None, "keys.txt:2: a key must be at least 16 characters"),
        ("two words here, long enough\n", None, "keys.txt:1: a key is one word"),
        ("caf\u00e9" * 5 + "\n", None, "keys.txt:1: a key is one word of printable ASCII"),
    ],
)
def test_parse_api_keys(text: str, keys: list[str] | None, error: str | None) -> None:
    if error is None:
        assert access.parse_api_keys(text, "keys.txt") == keys
    else:
        with pytest.raises(AccessConfigError, match=error):
            access.parse_api_keys(text, "keys.txt")


@pytest.mark.parametrize(
    "presented, ok",
    [(KEY, True), (OTHER_KEY, True), (None, False), ("", False), (KEY[:-1], False), (KEY + "x", False),
     (KEY.upper(), False)],
)
def test_api_keys_match(presented: str | None, ok: bool) -> None:
    assert ApiKeys.of([KEY, OTHER_KEY]).matches(presented) is ok


@pytest.mark.parametrize(
    "headers, key",
    [
        ({"authorization": f"Bearer {KEY}"}, KEY),
        ({"authorization": f"bearer   {KEY} "}, KEY),
        ({"x-api-key": KEY}, KEY),
        ({"authorization": f"Basic {KEY}", "x-api-key": OTHER_KEY}, OTHER_KEY),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert access.presented_key(headers) == key


@pytest.mark.parametrize(
    "kind, method, keys_on, protect_service, needed",
    [
        (ENDPOINT, "POST", False, True, False),  # off by default
        (ENDPOINT, "POST", True, True, True),
        (ENDPOINT, "GET", True, True, True),
        (ENDPOINT, "OPTIONS", True, True, False),  # preflights carry no credentials
        (HEALTHZ, "GET", True, True, False),
        (V2_HEALTH, "GET", True, True, False),  # kubelet probes carry no key (Triton, KServe)
        (V2_HEALTH, "GET", True, False, False),
        (READYZ, "GET", True, True, True),
        (METRICS, "GET", True, True, True),
        (READYZ, "GET", True, False, False),  # --api-keys-metrics open
        (METRICS, "GET", True, False, False),
    ],
)
def test_needs_key(kind: str, method: str, keys_on: bool, protect_service: bool, needed: bool) -> None:
    assert access.needs_key(kind, method, keys_on, protect_service) is needed


@pytest.mark.parametrize("path, kind", [
    ("/healthz", HEALTHZ), ("/readyz", READYZ), ("/metrics", METRICS),
    ("/iris/classifier", ENDPOINT), ("/metrics/x", ENDPOINT),
    ("/v2/health/live", V2_HEALTH), ("/v2/health/ready", V2_HEALTH), ("/v2/health/ready/", V2_HEALTH),
    # everything else under /v2 names models or the server: a key, as an endpoint
    ("/v2", ENDPOINT), ("/v2/health", ENDPOINT), ("/v2/health/other", ENDPOINT), ("/v2/health/live/x", ENDPOINT),
    ("/v2/models/iris/ready", ENDPOINT), ("/v2/models/health/ready", ENDPOINT), ("/x/v2/health/live", ENDPOINT),
])
def test_route_kind(path: str, kind: str) -> None:
    assert access.route_kind(path) == kind


def key_file(tmp_path: Any, text: str, mode: int = 0o640) -> str:
    path = tmp_path / "api-keys"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_key_file_readable_by_everyone_is_refused(tmp_path: Any) -> None:
    path = key_file(tmp_path, KEY + "\n", 0o644)
    expected = rf"--api-keys: {path} can be read or written by every user.*chmod o-rwx"
    with pytest.raises(AccessConfigError, match=expected):
        access.load_api_keys(path)


def test_access_checks_keys_and_reload_keeps_old_keys_on_a_bad_file(tmp_path: Any) -> None:
    path = key_file(tmp_path, KEY + "\n")
    policy = Access(AccessSettings.from_options(api_keys=path))
    refusal = policy.check(ENDPOINT, "POST", {})
    assert refusal is not None and refusal.status == 401
    assert refusal.headers["WWW-Authenticate"].startswith("Bearer")
    assert refusal.headers["Access-Control-Allow-Origin"] == "*"  # browsers can read the 401
    assert policy.check(ENDPOINT, "POST", {"x-api-key": KEY}) is None
    assert policy.check(HEALTHZ, "GET", {}) is None
    assert policy.check(METRICS, "GET", {}) is not None
    key_file(tmp_path, OTHER_KEY + "\n")
    assert policy.reload() is None
    assert policy.check(ENDPOINT, "POST", {"x-api-key": KEY}) is not None
    assert policy.check(ENDPOINT, "POST", {"authorization": f"Bearer {OTHER_KEY}"}) is None
    key_file(tmp_path, "too short\n")
    problem = policy.reload()
    assert problem is not None and "still using the 1 keys read before" in problem
    assert policy.check(ENDPOINT, "POST", {"x-api-key": OTHER_KEY}) is None


def test_without_key_file_everything_is_open() -> None:
    policy = Access(AccessSettings())
    for kind in (ENDPOINT, HEALTHZ, READYZ, METRICS):
        assert policy.check(kind, "POST", {}) is None


def test_api_keys_metrics_option() -> None:
    assert AccessSettings.from_options(api_keys_metrics="open").protect_service is False
    with pytest.raises(AccessConfigError, match="--api-keys-metrics: 'public'; use protected or open"):
        AccessSettings.from_options(api_keys_metrics="public")


# ---------------------------------------------------------------- CORS


@pytest.mark.parametrize(
    "text, origins",
    [
        ("*", ("*",)),
        (None, ("*",)),
        ("none", ()),
        ("https://app.example.com, http://localhost:3000/", ("https://app.example.com", "http://localhost:3000")),
    ],
)
def test_parse_cors_origins(text: str | None, origins: tuple[str, ...]) -> None:
    assert access.parse_cors_origins(text) == origins


def test_parse_cors_origins_refuses_what_is_not_an_origin() -> None:
    with pytest.raises(AccessConfigError, match=r"--cors-origins: 'app.example.com' is not an origin"):
        access.parse_cors_origins("app.example.com")


APP = "https://app.example.com"


@pytest.mark.parametrize(
    "kind, origins, origin, preflight, requested, expected",
    [
        (ENDPOINT, ("*",), None, False, None, {"Access-Control-Allow-Origin": "*"}),
        (METRICS, ("*",), APP, False, None, {}),
        (READYZ, ("*",), APP, False, None, {}),
        (HEALTHZ, ("*",), APP, True, None, {}),
        (V2_HEALTH, ("*",), APP, False, None, {"Access-Control-Allow-Origin": "*"}),  # as the rest of /v2
        (V2_HEALTH, (APP,), APP, False, None, {"Access-Control-Allow-Origin": APP, "Vary": "Origin"}),
        (ENDPOINT, (), APP, False, None, {}),
        (ENDPOINT, (APP,), APP, False, None, {"Access-Control-Allow-Origin": APP, "Vary": "Origin"}),
        (ENDPOINT, (APP,), "https://evil.example", False, None, {"Vary": "Origin"}),
        (ENDPOINT, ("*",), APP, True, "content-type, authorization, x-api-key",
         {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
          "Access-Control-Allow-Headers": "content-type, authorization, x-api-key", "Access-Control-Max-Age": "600"}),
        (ENDPOINT, ("*",), APP, True, None,
         {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
          "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600"}),
        (ENDPOINT, ("*",), APP, True, "x\r\nSet-Cookie: a=b",  # never echoed: not a header list
         {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
          "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600"}),
    ],
)
def test_cors_headers(kind: str, origins: tuple[str, ...], origin: str | None, preflight: bool,
                      requested: str | None, expected: dict[str, str]) -> None:
    assert access.cors_headers(kind, origins, origin, preflight, requested) == expected


# ---------------------------------------------------------------- TLS


def self_signed(tmp_path: Any) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_context(tmp_path: Any) -> None:
    assert access.tls_context(None, None) is None
    cert, key = self_signed(tmp_path)
    context = access.tls_context(cert, key)
    assert isinstance(context, ssl.SSLContext) and context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "which, message",
    [
        ("cert-only", "--tls-cert and --tls-key go together"),
        ("missing", "no such file"),
        ("swapped", "cannot load them"),
    ],
)
def test_tls_context_errors(tmp_path: Any, which: str, message: str) -> None:
    if which == "cert-only":
        args: tuple[str | None, str | None] = ("cert.pem", None)
    elif which == "missing":
        args = (str(tmp_path / "nope.pem"), str(tmp_path / "nope.key"))
    else:
        cert, key = self_signed(tmp_path)
        args = (key, cert)
    with pytest.raises(AccessConfigError, match=message):
        access.tls_context(*args)
    assert not os.path.exists(tmp_path / "nope.pem")


def test_tls_context_names_the_file_that_is_missing(tmp_path: Any) -> None:
    cert, _key = self_signed(tmp_path)
    missing = str(tmp_path / "nope.key")
    with pytest.raises(AccessConfigError, match=f"{missing}: no such file"):
        access.tls_context(cert, missing)
