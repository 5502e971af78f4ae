"""Stream a WAV to the scheduler like the web client, and print each result with its latency.

    python examples/stream_client.py                              # the shipped clip, zh -> en, real time
    python examples/stream_client.py --src en --tgt zh --cut vad  # one utterance per sentence
    python examples/stream_client.py --wav my.wav --no-realtime   # as fast as the socket takes it

The WAV must be 16-bit mono (16 kHz expected; other rates are announced in session_init, not resampled).
Latency runs from the end of an utterance (the empty is_final chunk) to its result. Exit status: 0 if every
outcome was a translation_result, 1 otherwise, 2 if the session could not start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio
import trio_websocket

try:
    import trioscheduler.sim  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioscheduler.sim.client import (
    DEFAULT_SESSION_URL,
    SessionReport,
    SimClient,
    SimClientError,
    UtteranceResult,
    default_wav_path,
    read_wav,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stream a WAV to trioscheduler and print results.")
    parser.add_argument("--scheduler", default=DEFAULT_SESSION_URL, help="session endpoint (default: %(default)s)")
    parser.add_argument("--wav", type=Path, default=default_wav_path(), help="16-bit mono WAV (default: shipped clip)")
    parser.add_argument("--src", default="zh", help="source language (default: %(default)s)")
    parser.add_argument("--tgt", default="en", help="target language (default: %(default)s)")
    parser.add_argument("--no-realtime", action="store_true", help="send chunks as fast as possible")
    parser.add_argument("--cut", choices=("end", "vad"), default="end",
                        help="end: one is_final at the end (default); vad: one per phrase, silence not sent")
    parser.add_argument("--chunk-ms", type=int, default=200, help="chunk duration (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for results after the last cut")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def print_result(result: UtteranceResult) -> None:
    latency = f"{result.latency_ms:7.1f} ms" if result.latency_ms is not None else "      ? ms"
    index = "-" if result.utterance_index is None else str(result.utterance_index)
    if result.kind == "translation_result":
        detail = f"asr={result.text_asr!r} -> {result.text_translated!r} (tts {result.tts_audio_bytes} B)"
    elif result.kind == "missing_result":
        detail = f"missing: {result.reason}"
    else:
        detail = f"error {result.error_code}: {result.error_message}"
    print(f"[{result.received_at_ms / 1000:6.2f} s] utt {index:>3}  {latency}  {detail}", flush=True)


def print_summary(report: SessionReport) -> None:
    latencies = sorted(report.latencies_ms)
    print(
        f"session {report.session_id}: {report.chunks_sent} chunks ({report.audio_bytes_sent} B audio), "
        f"{report.cuts} cut(s), {len(report.translations)} result(s), {len(report.missing)} missing, "
        f"{len(report.errors)} error(s), {len(report.partials)} partial(s), "
        f"close {'acked' if report.close_acked else 'NOT acked'}"
        + (", scheduler hung up" if report.closed_by_peer else "")
        + (f"; latency min {latencies[0]:.1f} / max {latencies[-1]:.1f} ms" if latencies else ""),
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> int:
    audio = read_wav(args.wav)
    print(f"streaming {args.wav} ({audio.duration_ms / 1000:.2f} s, {audio.sample_rate} Hz) to {args.scheduler}, "
          f"{args.src} -> {args.tgt}, {'as fast as possible' if args.no_realtime else 'real time'}", flush=True)
    client = SimClient(
        src_lang=args.src,
        tgt_lang=args.tgt,
        chunk_ms=args.chunk_ms,
        realtime=not args.no_realtime,
        cut=args.cut,
        result_timeout_s=args.timeout,
        on_result=print_result,
    )
    try:
        report = await client.run(args.scheduler, audio)
    except (OSError, trio_websocket.HandshakeError, SimClientError) as exc:
        print(f"could not start a session: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print_summary(report)
    return 0 if report.results and all(r.ok for r in report.results) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return trio.run(main_async, args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
