"""docs/sdk.md: its minimal node and minimal client run, as printed, against a live scheduler and each other."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.wire import ROOT, start_daemon_process

DOC = ROOT / "docs" / "sdk.md"


def program(name: str) -> str:
    """The ```python block of docs/sdk.md whose first line is ``# <name>: ...``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    matching = [block for block in blocks if block.startswith(f"# {name}:")]
    assert len(matching) == 1, f"{name}: {len(matching)} blocks"
    return matching[0]


def test_both_programs_are_in_the_doc_and_take_scheduler() -> None:
    for name in ("minimal_node.py", "minimal_client.py"):
        source = program(name)
        compile(source, name, "exec")
        assert '"--scheduler"' in source and 'if __name__ == "__main__":' in source


async def read_until(stream: trio.abc.ReceiveStream, pattern: str, seen: list[bytes]) -> str:
    while True:
        text = b"".join(seen).decode(errors="replace")
        match = re.search(pattern, text)
        if match:
            return match.group(0)
        chunk = await stream.receive_some()
        assert chunk, f"ended before {pattern!r}: {text}"
        seen.append(chunk)


async def stderr_of(process: trio.Process) -> str:
    assert process.stderr is not None
    with trio.move_on_after(5):
        return (await process.stderr.receive_some(65536)).decode(errors="replace")
    return "(no stderr)"


async def test_the_minimal_node_answers_the_minimal_client(tmp_path: Path) -> None:
    for name in ("minimal_node.py", "minimal_client.py"):
        (tmp_path / name).write_text(program(name))
    daemon, urls = await start_daemon_process("--port", "0", "--http-port", "0", "--log-level", "warning")
    node = await trio.lowlevel.open_process(
        [sys.executable, str(tmp_path / "minimal_node.py"), "--scheduler", urls.group(2)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = await trio.lowlevel.open_process(
        [sys.executable, str(tmp_path / "minimal_client.py"), "--scheduler", urls.group(1)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdout is not None
    seen: list[bytes] = []
    try:
        with trio.fail_after(30):
            # the client's tone is 1 s of pcm16; the node says so; a result before the node registered is an
            # error line (no node), so wait for two answered utterances from the node
            line = await read_until(client.stdout, r"\d+: '1\.0 s of zh speech' -> '\[en\] 1\.0 s of zh speech' "
                                                   r"\(0 B of pcm16\)", seen)
            assert line
        client.send_signal(signal.SIGINT)  # "until stopped": Ctrl-C ends it cleanly
        node.send_signal(signal.SIGTERM)  # the node drains and returns
        with trio.fail_after(20):
            assert await client.wait() == 0, await stderr_of(client)
            assert await node.wait() == 0, await stderr_of(node)
    finally:
        for process in (client, node):
            if process.returncode is None:
                process.kill()
                await process.wait()
        daemon.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            await daemon.wait()
