"""A worker node that really hears and speaks: pocketsphinx ASR, a glossary translator, espeak-ng TTS.

    pip install -e '.[speech]'          # pocketsphinx (English model included) and opuslib-next
    apt-get install espeak-ng libopus0  # Debian / Ubuntu
    python examples/speech_node.py --scheduler ws://127.0.0.1:5010/ws/node

It recognises English and answers in English, Chinese or German, and registers just that (English as its source,
the three as targets), so the scheduler sends it no job it cannot do. The translation is a small word-by-word
glossary, not a translation model: each result says so in ``extra.translator``. Plug in your own by passing a
``trioscheduler.speech.Translator`` to ``trioscheduler.speech.node.build_pipeline``. The node reconnects with
backoff when the scheduler goes away and drains on SIGTERM; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
from pathlib import Path

import trio

try:
    import trioscheduler.speech  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioscheduler.node import DEFAULT_NODE_URL
from trioscheduler.speech import INSTALL_HINT, missing_requirements
from trioscheduler.speech.node import SPEECH_NODE_SOURCES, SPEECH_NODE_TARGETS, build_pipeline, run_speech_node


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A trioscheduler worker node with real speech engines.")
    parser.add_argument("--scheduler", default=DEFAULT_NODE_URL, help="node endpoint (default: %(default)s)")
    parser.add_argument("--node-id", help="node id to register with (default: the scheduler picks one)")
    parser.add_argument("--token", help="bearer token, when the scheduler requires one")
    parser.add_argument("--capacity", type=int, default=2,
                        help="utterances processed at once, one pocketsphinx decoder each (default: %(default)s)")
    parser.add_argument("--targets", default=",".join(SPEECH_NODE_TARGETS),
                        help="target languages to register, a subset of the default %(default)s (speech in is "
                             f"{','.join(SPEECH_NODE_SOURCES)} only: what the pocketsphinx model recognises)")
    parser.add_argument("--max-audio-s", type=float, default=60.0,
                        help="longest utterance decoded; longer ones fail with AUDIO_TOO_LONG (default: %(default)s)")
    parser.add_argument("--words-per-minute", type=int, default=140, help="espeak-ng speed (default: %(default)s)")
    parser.add_argument("--tts-max-chars", type=int, default=1000,
                        help="characters of a translation spoken, the rest dropped (default: %(default)s)")
    parser.add_argument("--tts-timeout-s", type=float, default=20.0,
                        help="espeak-ng is killed after this; the job fails with TTS_FAILED (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.capacity < 1:
        parser.error("--capacity must be at least 1")
    args.targets = tuple(lang.strip() for lang in args.targets.split(",") if lang.strip())
    unknown = sorted(set(args.targets) - set(SPEECH_NODE_TARGETS))
    if unknown or not args.targets:
        parser.error(f"--targets: this node writes and speaks {','.join(SPEECH_NODE_TARGETS)} only, not "
                     f"{','.join(unknown) or 'nothing'}")
    return args


async def main_async(args: argparse.Namespace) -> None:
    pipeline = build_pipeline(capacity=args.capacity, max_audio_s=args.max_audio_s,
                              words_per_minute=args.words_per_minute, tts_max_chars=args.tts_max_chars,
                              tts_timeout_s=args.tts_timeout_s)
    logging.getLogger(__name__).info("speech node: ASR pocketsphinx (%s), translation %s, TTS espeak-ng (%s)",
                                     ",".join(SPEECH_NODE_SOURCES), pipeline.translator.name, ",".join(args.targets))
    await run_speech_node(args.scheduler, pipeline=pipeline, capacity=args.capacity, node_id=args.node_id,
                          token=args.token, sources=SPEECH_NODE_SOURCES, targets=args.targets)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"the speech node needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("trio-websocket", "trio_websocket"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(functools.partial(main_async, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
