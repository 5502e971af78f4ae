"""Every identifier the scheduler mints, in the original's formats (``job-<uuid>``, ``s-XXXXXXXX``).

Job and turn ids are made per utterance, so they come from the process's Mersenne Twister (seeded from the OS at
start) rather than ``uuid.uuid4()``, which costs a ``getrandom`` system call and a UUID object each time
(several times the cost; bench/README.md). They need to be unique, not secret: a node's result is accepted only
from the node the job was given to. Session and node ids stay on ``secrets``: a client or node presents them back.
"""

from __future__ import annotations

import random
import secrets

_VERSION_4 = 0x4 << 76
_VARIANT_RFC4122 = 0x2 << 62
_CLEAR = ~((0xF << 76) | (0x3 << 62))


def random_uuid() -> str:
    """A version-4 UUID string, as ``str(uuid.uuid4())`` gives."""
    text = "%032x" % (random.getrandbits(128) & _CLEAR | _VERSION_4 | _VARIANT_RFC4122)
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_job_id() -> str:
    return "job-" + random_uuid()


def new_node_id() -> str:
    return f"node-{secrets.token_hex(4).upper()}"


def new_session_id() -> str:
    return f"s-{secrets.token_hex(4).upper()}"
