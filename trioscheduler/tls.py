"""TLS for both listeners: the server's SSL context from ``[server] tls_cert`` and ``tls_key``."""

from __future__ import annotations

import ssl

from trioscheduler.config import ConfigError, ServerConfig

#: The one application protocol the door speaks over TLS (WebSockets upgrade from HTTP/1.1).
ALPN_PROTOCOLS = ["http/1.1"]


def tls_enabled(server: ServerConfig) -> bool:
    """Whether the listeners speak TLS; raises ConfigError if only one of the two keys is set."""
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key must be set together (--tls-cert, --tls-key)")
    return bool(server.tls_cert)


def server_ssl_context(server: ServerConfig) -> ssl.SSLContext | None:
    """A server context (TLS 1.2 or later, the ssl module's default ciphers) holding the configured certificate
    chain and key, or None when TLS is not configured. Raises ConfigError naming the file that cannot be used."""
    if not tls_enabled(server):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except ssl.SSLError as exc:  # an OSError too: first
        raise ConfigError(f"server.tls_cert {server.tls_cert!r} and server.tls_key {server.tls_key!r} are not a "
                          f"usable PEM certificate chain and matching private key: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read server.tls_cert {server.tls_cert!r} or server.tls_key {server.tls_key!r}: "
                          f"{exc.strerror or exc}") from None
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context
