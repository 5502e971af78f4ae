"""The static ``/try`` page: a browser client of ``/ws/session`` (microphone in, each utterance's outcome shown).

:func:`try_page_asset` answers the page's paths from files shipped with the package, read once per process and
never from a path a request names.
"""

from __future__ import annotations

import functools
from importlib import resources

TRY_PATH = "/try"
_ASSETS = {
    "/try": ("try.html", "text/html; charset=utf-8"),
    "/try/": ("try.html", "text/html; charset=utf-8"),
    "/try/try.js": ("try.js", "text/javascript; charset=utf-8"),
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("trioscheduler.web").joinpath(name).read_bytes()


def try_page_asset(path: str, session_port: int = 0) -> tuple[bytes, str] | None:
    """(body, content type) of a ``/try`` path, or None for any other path.

    ``session_port`` (when not 0) is written into the page as the default port of ``/ws/session``, for a
    scheduler whose WebSockets listen on another port than its HTTP; else the page uses its own origin.
    """
    asset = _ASSETS.get(path)
    if asset is None:
        return None
    name, content_type = asset
    body = _read(name)
    if name.endswith(".html") and session_port:
        body = body.replace(b"<body>", f'<body data-session-port="{int(session_port)}">'.encode(), 1)
    return body, content_type
