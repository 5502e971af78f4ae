"""Stream a WAV to the scheduler with the client SDK (``trioscheduler.client``), printing each outcome and its latency.

    python examples/stream_client.py                              # the shipped clip, zh -> en, real time
    python examples/stream_client.py --src en --tgt zh --cut vad  # one utterance per sentence
    python examples/stream_client.py --format opus                # send 20 ms opus packets, as the web client does
    python examples/stream_client.py --wav my.wav --no-realtime   # as fast as the socket takes it
    python examples/stream_client.py --loop                       # stream the clip again and again until Ctrl-C

The WAV must be 16-bit mono (16 kHz expected; other rates are announced in session_init, not resampled).
Latency runs from the end of an utterance (``end_utterance``) to its outcome. Each pass is one session; a session
that loses its connection is not resumed (with ``--loop`` the next pass opens a new one). Exit status: 0 if every
outcome was a result, 1 otherwise, 2 if the session could not start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio
import trio_websocket

try:
    import trioscheduler.client  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioscheduler import client
from trioscheduler.sim.client import DEFAULT_SESSION_URL, Pcm16Audio, chunk_rms, default_wav_path, read_wav

VAD_THRESHOLD = 200.0  # RMS below which a chunk is silence (pcm16 full scale is 32767)
CLOSE_TIMEOUT_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stream a WAV to trioscheduler and print results.")
    parser.add_argument("--scheduler", default=DEFAULT_SESSION_URL, help="session endpoint (default: %(default)s)")
    parser.add_argument("--wav", type=Path, default=default_wav_path(), help="16-bit mono WAV (default: shipped clip)")
    parser.add_argument("--src", default="zh", help="source language (default: %(default)s)")
    parser.add_argument("--tgt", default="en", help="target language (default: %(default)s)")
    parser.add_argument("--format", choices=("pcm16", "opus"), default="pcm16",
                        help="audio_format of the session (default: %(default)s)")
    parser.add_argument("--no-realtime", action="store_true", help="send chunks as fast as possible")
    parser.add_argument("--cut", choices=("end", "vad"), default="end",
                        help="end: one utterance for the whole clip (default); vad: one per phrase, silence not sent")
    parser.add_argument("--chunk-ms", type=int, default=200, help="chunk duration (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for results after the last cut")
    parser.add_argument("--loop", action="store_true", help="stream the clip again, one session a pass, until stopped")
    parser.add_argument("--token", help="sent as Authorization: Bearer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def describe(outcome: client.Outcome) -> str:
    if isinstance(outcome, client.Result):
        return f"asr={outcome.text_asr!r} -> {outcome.text_translated!r} (tts {len(outcome.tts_audio)} B)"
    if isinstance(outcome, client.MissingResult):
        return f"missing: {outcome.reason}"
    if isinstance(outcome, client.Error):
        return f"error {outcome.code}: {outcome.message}"
    return f"partial: {outcome.text!r}"


async def stream(session: client.Session, audio: Pcm16Audio, args: argparse.Namespace, cut_at: list[float]) -> None:
    """Send the clip in chunks; ``cut_at`` gets the time of each cut, in utterance order."""
    chunk_bytes = audio.sample_rate * 2 * args.chunk_ms // 1000
    voiced = False
    for start in range(0, len(audio.pcm), chunk_bytes):
        chunk = audio.pcm[start:start + chunk_bytes]
        if args.cut == "vad" and chunk_rms(chunk) < VAD_THRESHOLD:
            if voiced:
                await session.end_utterance()
                cut_at.append(trio.current_time())
            voiced = False
        else:
            await session.send_audio(chunk)
            voiced = True
        if not args.no_realtime:
            await trio.sleep(args.chunk_ms / 1000)
    if voiced or args.cut == "end":
        await session.end_utterance()
        cut_at.append(trio.current_time())


async def one_pass(audio: Pcm16Audio, args: argparse.Namespace) -> bool:
    """One session over the whole clip; True when every utterance got a result."""
    cut_at: list[float] = []
    answered: dict[int, client.Outcome] = {}
    streamed = trio.Event()
    async with client.connect(args.scheduler, src_lang=args.src, tgt_lang=args.tgt, audio_format=args.format,
                              sample_rate=audio.sample_rate, token=args.token) as session:
        print(f"session {session.session_id}: {args.src} -> {args.tgt}, {args.format}", flush=True)

        async def send_all(waiting: trio.CancelScope) -> None:
            await stream(session, audio, args, cut_at)
            streamed.set()
            if len(answered) >= len(cut_at):
                waiting.cancel()  # everything was answered while the last chunks went out
            waiting.deadline = trio.current_time() + args.timeout

        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as waiting:
                nursery.start_soon(send_all, waiting)
                async for outcome in session:
                    index = getattr(outcome, "utterance_index", None)
                    latency = ""
                    if isinstance(index, int) and index < len(cut_at):
                        latency = f"{(trio.current_time() - cut_at[index]) * 1000:7.1f} ms"
                    print(f"utt {index if index is not None else '-':>3}  {latency:>10}  {describe(outcome)}",
                          flush=True)
                    if isinstance(index, int) and not isinstance(outcome, client.Partial):
                        answered[index] = outcome
                    if streamed.is_set() and len(answered) >= len(cut_at):
                        break
            nursery.cancel_scope.cancel()
        await session.close()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            async for outcome in session:  # outcomes flushed by the close, then session_close_ack
                print(f"utt {getattr(outcome, 'utterance_index', '-')!s:>3}  {'':>10}  {describe(outcome)}")
    results = sum(isinstance(o, client.Result) for o in answered.values())
    print(f"session {session.session_id}: {len(cut_at)} cut(s), {results} result(s), "
          f"{len(cut_at) - results} without a result", flush=True)
    return bool(cut_at) and results == len(cut_at)


async def main_async(args: argparse.Namespace) -> int:
    audio = read_wav(args.wav)
    print(f"streaming {args.wav} ({audio.duration_ms / 1000:.2f} s, {audio.sample_rate} Hz) to {args.scheduler}, "
          f"{'as fast as possible' if args.no_realtime else 'real time'}", flush=True)
    while True:
        try:
            ok = await one_pass(audio, args)
        except (OSError, trio_websocket.HandshakeError, client.SessionRefused) as exc:
            print(f"could not start a session: {type(exc).__name__}: {exc}", file=sys.stderr)
            if not args.loop:
                return 2
            await trio.sleep(1.0)
            continue
        if not args.loop:
            return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    status = 130
    try:
        status = trio.run(main_async, args)
    except* KeyboardInterrupt:  # Ctrl-C, maybe in an exception group from the session's nursery
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
