"""What the speech node needs that may not be installed, and how to install it."""

from __future__ import annotations

import importlib.util

from trioscheduler import opus
from trioscheduler.speech.tts import espeak_path

INSTALL_HINT = ("pip install -e '.[speech]' (pocketsphinx, opuslib-next) and, on Debian or Ubuntu, "
                "apt-get install espeak-ng libopus0")


def missing_requirements() -> list[str]:
    """The speech node's missing pieces, by name (empty when it can run)."""
    missing = [f"python package {package}" for package, module in (("pocketsphinx", "pocketsphinx"),
                                                                     ("opuslib-next", "opuslib_next"))
               if importlib.util.find_spec(module) is None]
    if importlib.util.find_spec("opuslib_next") is not None and opus.unavailable_reason() is not None:
        missing.append("library libopus (Debian's libopus0)")
    if espeak_path() is None:
        missing.append("program espeak-ng")
    return missing
