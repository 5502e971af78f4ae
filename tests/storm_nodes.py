"""A heartbeat storm in its own process: ``count`` nodes register, print "ready", then each heartbeats every
``interval`` seconds until stdin closes (or ``max_seconds``); on exit it prints how many heartbeats it sent.

Run by tests/test_field_report.py, so the storm's own CPU is not charged to the daemon's event loop."""

from __future__ import annotations

import json
import sys

import trio
import trio_websocket

from tests.wire import heartbeat, node_register


async def main(url: str, count: int, interval: float, max_seconds: float) -> None:
    registered = 0
    sent = 0
    all_registered = trio.Event()
    stop = trio.Event()

    async def node(i: int) -> None:
        nonlocal registered, sent
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(json.dumps(node_register(f"storm-{i}", languages=("fr", "de"))))
            while json.loads(await ws.get_message())["type"] != "node_register_ack":
                pass
            frame = json.dumps(heartbeat(f"storm-{i}", languages=("fr", "de")))
            registered += 1
            if registered == count:
                all_registered.set()
            await all_registered.wait()
            next_beat = trio.current_time()
            while not stop.is_set():
                await ws.send_message(frame)
                sent += 1
                next_beat += interval
                with trio.move_on_at(next_beat):
                    await stop.wait()

    async def watch_stdin() -> None:
        await all_registered.wait()
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        stop.set()

    with trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_stdin)
            for i in range(count):
                nursery.start_soon(node, i)
            await stop.wait()
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    print(f"sent {sent}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
