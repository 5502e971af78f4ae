"""Who is on the other end of a socket, as the door established it before the WebSocket opened."""

from __future__ import annotations

import attrs


@attrs.frozen
class Principal:
    """The identity a connection acts as. Immutable for the connection's life.

    ``credential`` names the credential presented (a digest, never the secret itself), or is None when
    authentication is off; ``tenant_id`` is the tenant a client's API key maps to, None for nodes and when off.
    """

    credential: str | None = None
    tenant_id: str | None = None


#: The identity of every connection when authentication is off.
ANONYMOUS = Principal()
