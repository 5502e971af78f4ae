"""The hostile-input fuzzer's parts: raw WebSocket peers below trio-websocket (frames.py), hypothesis strategies of
hostile connections (actions.py) and the live-daemon run that checks the invariants (harness.py).

How much runs follows the hypothesis profile (tests/conftest.py): under ``ci`` each fuzz test runs a fifth of the
profile's examples with short action lists; under ``thorough`` (``HYPOTHESIS_PROFILE=thorough``) ten times as many,
with longer lists.
"""

from __future__ import annotations

import os

from hypothesis import settings

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "thorough"


def fuzz_examples(share: int = 5) -> int:
    """Examples for one fuzz test: the profile's max_examples divided by ``share``."""
    return max(1, settings.default.max_examples // share)


#: Hostile connections per example, and frames per hostile connection.
MAX_HOSTILE_CONNECTIONS = 8 if THOROUGH else 4
MAX_FRAMES = 12 if THOROUGH else 5
