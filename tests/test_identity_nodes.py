"""Issue 10, point 2: a node_id belongs to the credential that first registered it. Until the door authenticates
sockets these tests hand each node socket its Principal through ``Scheduler.handle_node`` (in-memory transports,
MockClock); tests/test_identity_wire.py does the same over real sockets with real tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from tests.wire import Peer, b64, memory_session, node_register, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.transport import MemoryTransport, memory_transport_pair

A, B = Principal(credential="cred-a"), Principal(credential="cred-b")


async def node_socket(nursery: trio.Nursery, scheduler: Scheduler,
                      principal: Principal) -> tuple[Peer, MemoryTransport]:
    """A raw node over an in-memory transport that the scheduler sees as ``principal``: (peer, the scheduler's
    end, which records the close code)."""
    server_side, client_side = memory_transport_pair("node")
    nursery.start_soon(scheduler.handle_node, server_side, principal)
    return Peer(client_side), server_side  # type: ignore[arg-type]


async def register(nursery: trio.Nursery, scheduler: Scheduler, principal: Principal, node_id: str,
                   **kwargs: Any) -> tuple[Peer, MemoryTransport, dict[str, Any]]:
    node, server_side = await node_socket(nursery, scheduler, principal)
    await node.send(**node_register(node_id, **kwargs))
    return node, server_side, await node.recv_type("node_register_ack", "error")


async def utterance(client: Peer, session_id: str, index: int) -> None:
    await client.send(type="utterance", session_id=session_id, utterance_index=index, manual_cut=True,
                      audio=b64(pcm(200)), audio_format="pcm16", sample_rate=16000)


async def closed_with(transport: MemoryTransport) -> int | None:
    with trio.fail_after(5):
        while not transport.closed:
            await trio.sleep(0.01)
    return transport.close_code


def _scheduler(make_config: Callable[..., Config], **limits: Any) -> Scheduler:
    return Scheduler(make_config(limits=limits, scheduler={"job_timeout_seconds": 30.0}))


async def test_another_credential_cannot_take_a_live_node_id(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = _scheduler(make_config)
    await nursery.start(scheduler.run)
    real, real_end, ack = await register(nursery, scheduler, A, "gpu-1")
    assert ack["type"] == "node_register_ack"
    client, sid = await memory_session(nursery, scheduler)
    await utterance(client, sid, 0)
    assign = await real.recv_type("job_assign")

    impostor, impostor_end, refused = await register(nursery, scheduler, B, "gpu-1")
    assert refused["type"] == "error" and refused["code"] == "NODE_ID_IN_USE" and refused["field"] == "node_id"
    assert await closed_with(impostor_end) == CloseCode.NODE_ID_IN_USE
    assert not real_end.closed
    await real.send(**result_for(assign, node_id="gpu-1"))
    result = await client.recv_type("translation_result")
    assert result["node_id"] == "gpu-1" and result["utterance_index"] == 0
    stats = await scheduler.stats()
    assert stats is not None and [n["node_id"] for n in stats["nodes"]] == ["gpu-1"]
    assert stats["counters"]["node_registrations_refused_id_in_use"] == 1


async def test_the_same_credential_replaces_its_connection_and_keeps_the_jobs(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = _scheduler(make_config)
    await nursery.start(scheduler.run)
    old, old_end, _ = await register(nursery, scheduler, A, "gpu-1")
    client, sid = await memory_session(nursery, scheduler)
    await utterance(client, sid, 0)
    first = await old.recv_type("job_assign")
    new, _, ack = await register(nursery, scheduler, A, "gpu-1")
    assert ack["type"] == "node_register_ack"
    assert await closed_with(old_end) == CloseCode.NORMAL
    again = await new.recv_type("job_assign")  # lost with the old connection: sent again to the same node_id
    assert again["utterance_index"] == first["utterance_index"] and again["attempt_id"] == 2
    await new.send(**result_for(again, node_id="gpu-1"))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 0


async def test_a_gone_nodes_id_stays_its_credentials_while_its_jobs_are_unsettled(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    """Its lost job waits for a node (none other serves the pair); within the reuse window and then while that
    job is unsettled, another credential may not take the id (and get the job); once it is settled and the
    window passed, it may."""
    scheduler = Scheduler(make_config(limits={"node_id_reuse_seconds": 5.0},
                                      scheduler={"pending_timeout_seconds": 20.0}))
    await nursery.start(scheduler.run)
    real, real_end, _ = await register(nursery, scheduler, A, "gpu-1")
    client, sid = await memory_session(nursery, scheduler)
    await utterance(client, sid, 0)
    await real.recv_type("job_assign")
    await real.ws.aclose()
    await trio.sleep(1.0)
    _, end, refused = await register(nursery, scheduler, B, "gpu-1")
    assert refused["code"] == "NODE_ID_IN_USE" and await closed_with(end) == CloseCode.NODE_ID_IN_USE
    await trio.sleep(10.0)  # past the window; the job still waits (pending_timeout_seconds 20)
    _, end, refused = await register(nursery, scheduler, B, "gpu-1")
    assert refused["code"] == "NODE_ID_IN_USE"
    assert (await client.recv_type("error"))["code"] == "NODE_UNAVAILABLE"  # the job is settled now
    await trio.sleep(6.0)
    impostor, impostor_end, ack = await register(nursery, scheduler, B, "gpu-1")
    assert ack["type"] == "node_register_ack" and not impostor_end.closed


async def test_the_original_credential_takes_its_id_back_after_a_disconnect(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = _scheduler(make_config)
    await nursery.start(scheduler.run)
    real, _, _ = await register(nursery, scheduler, A, "gpu-1")
    await real.ws.aclose()
    await trio.sleep(1.0)
    _, end, ack = await register(nursery, scheduler, A, "gpu-1")
    assert ack["type"] == "node_register_ack" and not end.closed


async def test_without_authentication_a_reconnect_replaces_the_node_as_before(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = _scheduler(make_config)
    await nursery.start(scheduler.run)
    _, first_end, _ = await register(nursery, scheduler, ANONYMOUS, "gpu-1")
    _, second_end, ack = await register(nursery, scheduler, ANONYMOUS, "gpu-1")
    assert ack["type"] == "node_register_ack"
    assert await closed_with(first_end) == CloseCode.NORMAL and not second_end.closed
    stats = await scheduler.stats()
    assert stats is not None and stats["counters"].get("node_registrations_refused_id_in_use") is None
