"""Wall-clock time for the wire's ``*_ms`` timestamps (``created_at_ms``, ``scheduler_sent_at_ms``, heartbeats).

Deadlines never use it: they run on trio's clock, which a test can mock and which never jumps.
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, as the original's messages carry them."""
    return int(time.time() * 1000)
