"""Who may connect: credentials, the bind policy and the Origin policy the door applies before any WebSocket opens.

Guarantees:

- Every configured secret is kept only as its SHA-256 digest (``"sha256:<hex>"`` in the config is taken as the
  digest itself), and a presented credential is hashed and compared with every configured digest of its kind by
  ``hmac.compare_digest``, without stopping at the first match: the time taken does not depend on which digest, if
  any, matched, nor on how much of it did.
- Authentication is all or nothing: with no credential configured at all it is off and every socket is
  ``ANONYMOUS``; with any configured it is on for both WebSocket paths and the HTTP API's detailed endpoints, and a
  kind with nothing configured (say no ``api_keys``) admits nobody on that path.
- Off is allowed only on a loopback host: ``check_bind`` refuses any other host without credentials, unless
  ``auth.insecure`` is set (``--insecure``), and then ``warn_insecure`` logs a warning at start and every hour.
- A principal names its credential by a short id derived from the digest, never by the secret.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

import attrs
import trio

from trioscheduler.config import SECRET_DIGEST_PREFIX, AuthConfig, Config, ConfigError, LimitsConfig, ServerConfig
from trioscheduler.logs import emit
from trioscheduler.principal import ANONYMOUS, Principal

log = logging.getLogger("trioscheduler.auth")

#: How often ``warn_insecure`` repeats its warning.
INSECURE_WARNING_INTERVAL_SECONDS = 3600.0
#: ``server.allowed_origins`` entry that accepts any Origin.
ANY_ORIGIN = "*"
_BEARER = "bearer"


def secret_digest(secret: str) -> bytes:
    """The SHA-256 digest a configured secret stands for: the hex after ``sha256:``, else the hash of its UTF-8
    (a presented credential is hashed the same way; header bytes that are not UTF-8 are hashed as they came)."""
    if secret.startswith(SECRET_DIGEST_PREFIX):
        return bytes.fromhex(secret[len(SECRET_DIGEST_PREFIX):])
    return hashlib.sha256(secret.encode()).digest()


def credential_id(digest: bytes) -> str:
    """A short stable name for a credential (16 hex digits), for principals and logs; not the digest itself."""
    return hashlib.sha256(b"trioscheduler credential id\x00" + digest).hexdigest()[:16]


def _match(presented: str, digests: Sequence[bytes]) -> int | None:
    """Index of the digest ``presented`` hashes to, comparing with every digest (constant time per digest)."""
    candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found: int | None = None
    for index, digest in enumerate(digests):
        if hmac.compare_digest(candidate, digest) and found is None:
            found = index
    return found


class Refusal(enum.IntEnum):
    """Why a handshake or an HTTP request is refused, as its HTTP status."""

    MISSING = 401  #: no credential presented
    WRONG = 403  #: a credential that is not one of the configured ones of its kind


@attrs.frozen
class Credentials:
    """The digests of ``[auth]``, built once at start-up; nothing here holds a secret in clear."""

    node_digests: tuple[bytes, ...] = ()
    api_key_digests: tuple[bytes, ...] = ()
    api_key_tenants: tuple[str, ...] = ()
    admin_digests: tuple[bytes, ...] = ()

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Credentials:
        keys = list(auth.api_keys.items())
        return cls(node_digests=tuple(secret_digest(t) for t in auth.node_tokens),
                   api_key_digests=tuple(secret_digest(k) for k, _ in keys),
                   api_key_tenants=tuple(tenant for _, tenant in keys),
                   admin_digests=tuple(secret_digest(t) for t in auth.admin_tokens))

    @property
    def enabled(self) -> bool:
        """Whether any credential is configured (authentication on)."""
        return bool(self.node_digests or self.api_key_digests or self.admin_digests)

    def node(self, presented: str | None) -> Principal | Refusal:
        """The principal of a node presenting ``presented`` (``ANONYMOUS`` when authentication is off)."""
        if not self.enabled:
            return ANONYMOUS
        if presented is None:
            return Refusal.MISSING
        index = _match(presented, self.node_digests)
        if index is None:
            return Refusal.WRONG
        return Principal(credential=credential_id(self.node_digests[index]), tenant_id=None)

    def session(self, presented: str | None) -> Principal | Refusal:
        """The principal of a client presenting API key ``presented``, with the key's tenant."""
        if not self.enabled:
            return ANONYMOUS
        if presented is None:
            return Refusal.MISSING
        index = _match(presented, self.api_key_digests)
        if index is None:
            return Refusal.WRONG
        return Principal(credential=credential_id(self.api_key_digests[index]),
                         tenant_id=self.api_key_tenants[index])

    def admin(self, presented: str | None) -> Refusal | None:
        """None if ``presented`` is an admin token (or authentication is off), else why not."""
        if not self.enabled:
            return None
        if presented is None:
            return Refusal.MISSING
        return Refusal.WRONG if _match(presented, self.admin_digests) is None else None


# ------------------------------------------------------------------------------------------ presented credentials


class AmbiguousCredential(ValueError):
    """More than one credential presented (two Authorization headers, two ``token`` parameters)."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value; None for no header or another scheme."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _BEARER or not token:
        return None
    return token


def query_token(query: str) -> str | None:
    """The ``token`` parameter of a URL query string (percent-decoded). Raises AmbiguousCredential if repeated."""
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("token", [])
    if len(values) > 1:
        raise AmbiguousCredential("more than one token parameter")
    return values[0] if values and values[0] else None


def presented_credential(authorization: Iterable[str], query: str) -> str | None:
    """What a request presents: its Bearer token, else its ``token`` query parameter. ``authorization`` is every
    Authorization header value. Raises AmbiguousCredential for two headers, two parameters, or a header and a
    parameter that differ."""
    headers = list(authorization)
    if len(headers) > 1:
        raise AmbiguousCredential("more than one Authorization header")
    from_header = bearer_token(headers[0]) if headers else None
    from_query = query_token(query)
    if from_header is not None and from_query is not None and from_header != from_query:
        raise AmbiguousCredential("an Authorization header and a token parameter that differ")
    return from_header if from_header is not None else from_query


def admin_authorized(auth: AuthConfig | Credentials, authorization: str | None, token: str | None = None) -> bool:
    """Whether an HTTP request may use an admin endpoint: ``authorization`` is its Authorization header value,
    ``token`` its ``token`` query parameter (either may be None). True for an admin token, and for everyone when
    authentication is off (no credential configured: the daemon then only runs on loopback or with --insecure)."""
    credentials = auth if isinstance(auth, Credentials) else Credentials.from_config(auth)
    presented = bearer_token(authorization)
    return credentials.admin(presented if presented is not None else token) is None


def asgi_admin_refusal(credentials: Credentials, scope: Mapping[str, object]) -> Refusal | None:
    """``Credentials.admin`` for an ASGI HTTP scope (its Authorization headers and ``token`` query parameter);
    two different credentials in one request count as a wrong one."""
    raw_headers = scope.get("headers") or ()
    authorization = [value.decode("utf-8", "surrogateescape")
                     for name, value in raw_headers  # type: ignore[attr-defined]
                     if name.lower() == b"authorization"]
    query = scope.get("query_string") or b""
    try:
        presented = presented_credential(authorization, query.decode("latin-1"))  # type: ignore[attr-defined]
    except AmbiguousCredential:
        return Refusal.WRONG if credentials.enabled else None
    return credentials.admin(presented)


# ------------------------------------------------------------------------------------------ the bind policy


def http_admin_refusal(credentials: Credentials, scope: Mapping[str, object], *, write: bool) -> Refusal | None:
    """Why an HTTP request to an admin endpoint is refused, or None when it may proceed: the one guard of the HTTP
    API. With authentication on, every admin endpoint (``write``: drain; otherwise the detailed reads) needs an
    admin token. With it off, the detailed reads are open and the write endpoints answer loopback peers only."""
    if credentials.enabled:
        return asgi_admin_refusal(credentials, scope)
    if not write:
        return None
    client = scope.get("client")
    return None if isinstance(client, (tuple, list)) and client and _is_loopback_peer(str(client[0])) \
        else Refusal.WRONG


def _is_loopback_peer(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # a dual-stack socket's IPv4 peer
    return address.is_loopback


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only listens on this machine: ``localhost`` or a loopback IP address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


class InsecureBind(ConfigError):
    """A non-loopback host without any credential configured, and ``auth.insecure`` not set."""


class BindPolicy(enum.Enum):
    AUTHENTICATED = "authenticated"  #: credentials configured: every socket presents one
    LOOPBACK_OPEN = "loopback_open"  #: none configured, loopback host: ANONYMOUS
    INSECURE_OPEN = "insecure_open"  #: none configured, other host, ``auth.insecure``: ANONYMOUS, warned


def check_bind(config: Config) -> BindPolicy:
    """How the daemon may run with ``config``; raises InsecureBind (its message says why and what to do)."""
    if Credentials.from_config(config.auth).enabled:
        return BindPolicy.AUTHENTICATED
    if is_loopback_host(config.server.host):
        return BindPolicy.LOOPBACK_OPEN
    if config.auth.insecure:
        return BindPolicy.INSECURE_OPEN
    raise InsecureBind(
        f"refusing to listen on {config.server.host!r} without authentication: no [auth] node_tokens, api_keys or "
        "admin_tokens are configured, so anyone who reaches the port could register nodes and open sessions. "
        "Configure credentials (docs/security.md), listen on 127.0.0.1, or pass --insecure (auth.insecure = true) "
        "to run open anyway")


async def warn_insecure(host: str, interval: float = INSECURE_WARNING_INTERVAL_SECONDS) -> None:
    """Log that the daemon runs open on a public host: now, then every ``interval`` seconds, until cancelled."""
    while True:
        emit(log, logging.WARNING, "insecure_bind", host=host,
             advice="no credentials configured: anyone who reaches the port may connect (docs/security.md)")
        await trio.sleep(interval)


# ------------------------------------------------------------------------------------------ the Origin policy


def _normalized_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@attrs.frozen
class OriginPolicy:
    """Which Origin headers a WebSocket handshake may carry. A handshake without one is always allowed."""

    any_origin: bool
    allowed: frozenset[str]

    @classmethod
    def from_config(cls, server: ServerConfig) -> OriginPolicy:
        listed = frozenset(_normalized_origin(o) for o in server.allowed_origins)
        if ANY_ORIGIN in listed:
            return cls(True, frozenset())
        if not listed:
            return cls(is_loopback_host(server.host), frozenset())
        return cls(False, listed)

    @property
    def checks(self) -> bool:
        """Whether any Origin can be refused (so the door must read the header)."""
        return not self.any_origin

    def allows(self, origins: Sequence[str]) -> bool:
        """Whether a handshake carrying these Origin header values may proceed (two different ones may not)."""
        if not origins:
            return True
        if self.any_origin:
            return True
        normalized = {_normalized_origin(o) for o in origins}
        return len(normalized) == 1 and normalized <= self.allowed


# ------------------------------------------------------------------------------------------ connections per address


@attrs.frozen
class ExemptAddresses:
    """The peers ``limits.connections_per_address`` does not hold (``connections_per_address_exempt``)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> ExemptAddresses:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in limits.connections_per_address_exempt))

    def __contains__(self, host: str) -> bool:
        """Whether peer IP ``host`` is exempt (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
