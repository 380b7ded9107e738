"""Who may do what on the host port: debug logging, API keys, CORS and TLS.

Pure decisions over plain values (a path, a method, a few headers, the peer's address), so
the HTTP app calls them and every rule is a row in tests/test_security_access.py.

- `?debug=true` logs the request body and the prediction into the API's log. It is parsed as
  Cortex did (the query parameter named exactly `debug`, its first value `true` in any case)
  and honoured only for loopback callers, for `cortexd predict --debug` (the control socket),
  and for addresses the operator lists (`serve --debug-from CIDR,...`; `none` turns even
  loopback off). A refused debug request is served without logging and its answer carries
  `X-Cortexd-Debug: refused ...`. Behind a reverse proxy on the same machine every caller is
  loopback: use `--debug-from none` there.
- API keys (`serve --api-keys FILE`, off by default): one key per line, `#` comments and
  blank lines ignored, each key at least 16 printable characters without spaces. Predictions
  and `GET <endpoint>` need `Authorization: Bearer <key>` or `X-API-Key: <key>`, else 401;
  `/healthz` is always open, and so are the V2 health checks `/v2/health/live` and
  `/v2/health/ready` (kubelet probes carry no key; Triton and KServe leave them open too);
  `/readyz` and `/metrics` need a key too unless `--api-keys-metrics open`. Keys are compared
  in constant time, against every key. CORS preflights (OPTIONS) need no key: browsers never
  send one with them.
- CORS (`serve --cors-origins`, default `*`): on endpoints only, never on /healthz, /readyz
  or /metrics. `*` answers every origin; a list answers only those origins (echoed, with
  `Vary: Origin`); `none` sends no CORS headers. A preflight echoes the requested headers.
- TLS (`serve --tls-cert FILE --tls-key FILE`): an ssl.SSLContext for the server, TLS 1.2+.
  The gRPC port's credentials, from the same files: serving/v2_backend.py.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

if TYPE_CHECKING:  # ssl is imported when TLS is asked for: replicas import this module too
    import ssl

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEALTHZ, READYZ, METRICS, ENDPOINT = "healthz", "readyz", "metrics", "endpoint"
V2_HEALTH = "v2-health"  # /v2/health/live and /v2/health/ready: open as /healthz, CORS as an endpoint
# As cortexd/v2/rest.py routes them (trailing slashes stripped): nothing else under /v2 is open.
_V2_HEALTH_PATHS = frozenset(("/v2/health/live", "/v2/health/ready"))
DEBUG_HEADER = "X-Cortexd-Debug"
DEBUG_REFUSED = "refused: debug logging is allowed from loopback and serve --debug-from addresses only"
MIN_KEY_CHARS = 16
MAX_KEYS = 10_000
MAX_KEY_FILE_BYTES = 1 << 20
PREFLIGHT_MAX_AGE_S = 600
ALLOW_METHODS = "GET, POST, OPTIONS"
_TOKEN_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


class AccessConfigError(Exception):
    """A serve option or file of this module is invalid; str() names it and what is wrong."""


# ---------------------------------------------------------------- routes


def route_kind(path: str) -> str:
    """Which rules apply to a path: the three service paths, or endpoint_kind's."""
    if path == "/healthz":
        return HEALTHZ
    if path == "/readyz":
        return READYZ
    if path == "/metrics":
        return METRICS
    return endpoint_kind(path)


def endpoint_kind(path: str) -> str:
    """The rules for a path the endpoint handler serves: the V2 health checks, or an endpoint."""
    return V2_HEALTH if path.rstrip("/") in _V2_HEALTH_PATHS else ENDPOINT


# ---------------------------------------------------------------- debug


@dataclass(frozen=True)
class DebugPolicy:
    loopback: bool = True
    networks: tuple[Network, ...] = ()


def parse_debug_from(text: str | None) -> DebugPolicy:
    """`serve --debug-from`: "" (default: loopback only), "none", or CIDRs/addresses separated
    by commas (honoured in addition to loopback)."""
    text = (text or "").strip()
    if not text:
        return DebugPolicy()
    if text.lower() == "none":
        return DebugPolicy(loopback=False)
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise AccessConfigError(
                f"--debug-from: {item!r} is not an address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8, or none)"
            ) from None
    return DebugPolicy(networks=tuple(networks))


def debug_requested(query: str) -> bool:
    """Whether a query string asks for debug logging: `debug` (exactly) with `true` as its first
    value, in any case. Costs one substring search for the queries that do not mention it."""
    if "debug" not in query:
        return False
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "debug":
            return value.lower() == "true"
    return False


def _address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return addr


def debug_allowed(peer: str | None, policy: DebugPolicy, trusted: bool = False) -> bool:
    """Whether debug logging is honoured for a caller. `trusted`: the control socket
    (`cortexd predict --debug`), whose users already read the logs. `peer`: the TCP peer's
    address (never a forwarded header, which the client writes)."""
    if trusted:
        return True
    addr = _address(peer or "")
    if addr is None:
        return False
    if policy.loopback and addr.is_loopback:
        return True
    return any(addr in net for net in policy.networks if net.version == addr.version)


@dataclass(frozen=True)
class DebugDecision:
    upstream_query: str  # what the replica receives: "debug=true" or ""
    header: tuple[str, str] | None  # added to the answer when a debug request was refused


_NO_DEBUG = DebugDecision("", None)
_DEBUG_ON = DebugDecision("debug=true", None)
_DEBUG_REFUSED = DebugDecision("", (DEBUG_HEADER, DEBUG_REFUSED))


def forwarded_query(query: str, decision: DebugDecision) -> str:
    """The client's query for a predictor that takes query_params (Cortex v0.17+): every
    parameter but `debug`, which the policy decided (`decision.upstream_query`)."""
    kept = urlencode([(n, v) for n, v in parse_qsl(query, keep_blank_values=True) if n != "debug"])
    return "&".join(part for part in (kept, decision.upstream_query) if part)


def decide_debug(query: str, peer: str | None, policy: DebugPolicy, trusted: bool = False) -> DebugDecision:
    """The query for the replica and the header for the answer. The replica reads nothing else
    from the query, so it is never forwarded as the client wrote it."""
    if not debug_requested(query):
        return _NO_DEBUG
    return _DEBUG_ON if debug_allowed(peer, policy, trusted) else _DEBUG_REFUSED


# ---------------------------------------------------------------- API keys


def _digest(key: str) -> bytes:
    # Fixed-length digests: compare_digest then takes the same time whatever the lengths.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """A set of keys, held as digests; `matches` compares against all of them every time."""

    digests: tuple[bytes, ...] = ()
    source: str = ""

    @classmethod
    def of(cls, keys: Sequence[str], source: str = "") -> ApiKeys:
        return cls(tuple(_digest(k) for k in keys), source)

    def __bool__(self) -> bool:
        return bool(self.digests)

    def matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        wanted = _digest(presented)
        found = False
        for digest in self.digests:  # no early exit: the time does not say which key matched
            found |= hmac.compare_digest(wanted, digest)
        return found


def parse_api_keys(text: str, source: str) -> list[str]:
    """The keys of a key file's text; AccessConfigError naming the file and line otherwise."""
    keys: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line) or not line.isprintable() or not line.isascii():
            raise AccessConfigError(f"{source}:{lineno}: a key is one word of printable ASCII characters (no spaces)")
        if len(line) < MIN_KEY_CHARS:
            raise AccessConfigError(
                f"{source}:{lineno}: a key must be at least {MIN_KEY_CHARS} characters "
                "(make one with: openssl rand -hex 32)"
            )
        keys.append(line)
    if not keys:
        raise AccessConfigError(f"{source}: no keys (one key per line; # starts a comment)")
    if len(keys) > MAX_KEYS:
        raise AccessConfigError(f"{source}: {len(keys)} keys, more than {MAX_KEYS}")
    return keys


def key_file_problem(path: str, st: os.stat_result) -> str | None:
    """A key file others can read or change is refused: its keys are secrets."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if stat.S_IMODE(st.st_mode) & 0o007:
        return (
            f"{path} can be read or written by every user (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"make it private: chmod o-rwx {path}"
        )
    if st.st_size > MAX_KEY_FILE_BYTES:
        return f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes; it should hold keys, one per line"
    return None


def load_api_keys(path: str) -> ApiKeys:
    """Read `serve --api-keys FILE` (at start and at every reload; a reload that cannot read it
    keeps the keys it had and says why). Raises AccessConfigError."""
    try:
        with open(path, "rb") as f:
            problem = key_file_problem(path, os.fstat(f.fileno()))
            if problem:
                raise AccessConfigError(f"--api-keys: {problem}")
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise AccessConfigError(f"--api-keys: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AccessConfigError(f"--api-keys: {path} is not UTF-8 text") from None
    return ApiKeys.of(parse_api_keys(text, path), path)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
    `headers` is case-insensitive (Sanic's) or has lowercase names."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def needs_key(kind: str, method: str, keys_on: bool, protect_service: bool) -> bool:
    if not keys_on or kind in (HEALTHZ, V2_HEALTH):
        return False
    if kind in (READYZ, METRICS):
        return protect_service
    return method != "OPTIONS"  # preflights carry no credentials


# ---------------------------------------------------------------- CORS


def parse_cors_origins(text: str | None) -> tuple[str, ...]:
    """`serve --cors-origins`: "*" (default), "none", or origins separated by commas
    (scheme://host[:port], as browsers send them in Origin)."""
    text = (text if text is not None else "*").strip()
    if text == "*":
        return ("*",)
    if text.lower() == "none" or not text:
        return ()
    origins = []
    for item in (part.strip().rstrip("/") for part in text.split(",")):
        if not item:
            continue
        if not re.match(r"^https?://[^/\s]+$", item):
            raise AccessConfigError(
                f"--cors-origins: {item!r} is not an origin (scheme://host[:port], e.g. https://app.example.com), "
                "'*' or 'none'"
            )
        origins.append(item.lower())
    return tuple(origins)


_ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}
_NONE: dict[str, str] = {}


def cors_headers(
    kind: str, origins: tuple[str, ...], origin: str | None, preflight: bool = False,
    requested_headers: str | None = None,
) -> dict[str, str]:
    """CORS headers for an answer on `kind`; {} where none belong. The dict may be shared:
    copy it before changing it."""
    if kind not in (ENDPOINT, V2_HEALTH) or not origins:
        return _NONE
    if origins == ("*",):
        if not preflight:
            return _ANY_ORIGIN  # the usual answer: no allocation
        headers = {"Access-Control-Allow-Origin": "*"}
    elif origin and origin.rstrip("/").lower() in origins:
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    else:
        return {"Vary": "Origin"}  # not an allowed origin: the browser keeps the answer from it
    if preflight:
        headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        wanted = (requested_headers or "").strip()
        headers["Access-Control-Allow-Headers"] = wanted if wanted and _TOKEN_LIST.match(wanted) else "Content-Type"
        headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
    return headers


# ---------------------------------------------------------------- TLS

TLS_PAIR = "--tls-cert and --tls-key go together: give both (PEM files), or neither"


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """`serve --tls-cert FILE --tls-key FILE`: the server's SSLContext (TLS 1.2 and later), or
    None when neither is given. Raises AccessConfigError naming the file and the problem."""
    import ssl

    if not cert and not key:
        return None
    if not cert or not key:
        raise AccessConfigError(TLS_PAIR)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        # load_cert_chain's error names no file: find the one that is not there.
        missing = exc.filename or next((p for p in (cert, key) if not os.path.exists(p)), cert)
        raise AccessConfigError(f"--tls-cert/--tls-key: {missing}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise AccessConfigError(
            f"--tls-cert {cert} / --tls-key {key}: cannot load them ({exc}); both must be PEM, "
            "the key unencrypted and matching the certificate"
        ) from None
    return context


# ---------------------------------------------------------------- the policy the app asks


@dataclass(frozen=True)
class AccessSettings:
    """The serve options of this module, parsed (`from_options`)."""

    api_keys_file: str | None = None
    protect_service: bool = True  # --api-keys-metrics protected|open
    debug: DebugPolicy = field(default_factory=DebugPolicy)
    cors_origins: tuple[str, ...] = ("*",)

    @classmethod
    def from_options(
        cls, api_keys: str | None = None, api_keys_metrics: str = "protected", debug_from: str | None = None,
        cors_origins: str | None = "*",
    ) -> AccessSettings:
        if api_keys_metrics not in ("protected", "open"):
            raise AccessConfigError(f"--api-keys-metrics: {api_keys_metrics!r}; use protected or open")
        return cls(
            api_keys_file=os.path.abspath(api_keys) if api_keys else None,
            protect_service=api_keys_metrics == "protected",
            debug=parse_debug_from(debug_from),
            cors_origins=parse_cors_origins(cors_origins),
        )


@dataclass(frozen=True)
class Refusal:
    status: int
    body: bytes
    headers: dict[str, str]


def unauthorized(cors: Mapping[str, str]) -> Refusal:
    body = {"error": "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>"}
    return Refusal(401, json.dumps(body).encode(), {**cors, "WWW-Authenticate": 'Bearer realm="cortexd"'})


class Access:
    """The policy the HTTP app asks on each request; `reload()` re-reads the key file."""

    def __init__(self, settings: AccessSettings) -> None:
        self.settings = settings
        self.keys = load_api_keys(settings.api_keys_file) if settings.api_keys_file else ApiKeys()

    def reload(self) -> str | None:
        """Re-read the key file (at `cortexd reload`); on failure keep the old keys and return why."""
        if not self.settings.api_keys_file:
            return None
        try:
            self.keys = load_api_keys(self.settings.api_keys_file)
        except AccessConfigError as exc:
            return f"{exc}; still using the {len(self.keys.digests)} keys read before"
        return None

    def check(self, kind: str, method: str, headers: Mapping[str, str]) -> Refusal | None:
        """None when the request may go on; else the 401 to answer."""
        if not needs_key(kind, method, bool(self.keys), self.settings.protect_service):
            return None
        if self.keys.matches(presented_key(headers)):
            return None
        return unauthorized(self.cors(kind, headers))

    def cors(self, kind: str, headers: Mapping[str, str], preflight: bool = False) -> dict[str, str]:
        """CORS headers for a request's answer (shared dict: copy before changing it)."""
        if self.settings.cors_origins == ("*",) and not preflight:
            return cors_headers(kind, ("*",), None)  # no header lookups on the hot path
        return cors_headers(
            kind, self.settings.cors_origins, headers.get("origin"), preflight,
            headers.get("access-control-request-headers"),
        )

    def debug(self, query: str, peer: str | None, trusted: bool = False) -> DebugDecision:
        return decide_debug(query, peer, self.settings.debug, trusted)
