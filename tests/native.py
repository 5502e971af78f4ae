"""Tests that need a native part the project installs from Debian (libopus0, espeak-ng, chromium): skipped on a
developer's machine without it, failing under CI (``CI`` set), where ``.ci/run`` installs it."""

from __future__ import annotations

import os

import pytest


def require(missing: str | None) -> None:
    """Skip (or fail under CI) with ``missing``, the reason a native part is not there; nothing when it is None."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)
