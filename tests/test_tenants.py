"""Issue 10, point 4: the tenant (the Principal's, as the door authenticated the socket) travels in job_assign,
the job_done line and the job records; limits.sessions_per_tenant bounds a tenant's open sessions. Until the door
authenticates sockets, these tests hand each session its Principal through ``Scheduler.handle_session``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.wire import Peer, b64, memory_node, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.transport import memory_transport_pair

ACME = Principal(credential="key-acme", tenant_id="acme")
GLOBEX = Principal(credential="key-globex", tenant_id="globex")


def client_socket(nursery: trio.Nursery, scheduler: Scheduler, principal: Principal) -> Peer:
    server_side, client_side = memory_transport_pair("session")
    nursery.start_soon(scheduler.handle_session, server_side, principal)
    return Peer(client_side)  # type: ignore[arg-type]


async def open_session(nursery: trio.Nursery, scheduler: Scheduler, principal: Principal,
                       **fields: Any) -> tuple[Peer, dict[str, Any]]:
    client = client_socket(nursery, scheduler, principal)
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16", **fields)
    return client, await client.recv_type("session_init_ack", "error")


async def test_the_tenant_of_the_api_key_travels_in_job_assign_and_the_job_records(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler.jobs")
    scheduler = Scheduler(make_config())
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "n1")
    # The key's tenant wins over whatever session_init says.
    client, ack = await open_session(nursery, scheduler, ACME, tenant_id="globex")
    await client.send(type="utterance", session_id=ack["session_id"], utterance_index=0, manual_cut=True,
                      audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
    assign = await node.recv_type("job_assign")
    assert assign["tenant_id"] == "acme"
    stats = await scheduler.client.snapshot(detail=True)
    assert stats is not None and [job["tenant_id"] for job in stats["job_list"]] == ["acme"]
    await node.send(**result_for(assign))
    await client.recv_type("translation_result")
    await trio.sleep(0.1)
    assert "job_done" in caplog.text and "tenant_id=acme" in caplog.text


async def test_without_a_tenant_job_assign_has_no_tenant_id(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(make_config())
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "n1")
    client, ack = await open_session(nursery, scheduler, ANONYMOUS)
    await client.send(type="utterance", session_id=ack["session_id"], utterance_index=0, manual_cut=True,
                      audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
    assert "tenant_id" not in await node.recv_type("job_assign")


async def test_a_tenant_at_its_session_limit_is_refused_until_one_closes(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(make_config(limits={"sessions_per_tenant": 2}))
    await nursery.start(scheduler.run)
    first, _ = await open_session(nursery, scheduler, ACME)
    await open_session(nursery, scheduler, ACME)
    third, refused = await open_session(nursery, scheduler, ACME)
    assert refused["type"] == "error" and refused["code"] == "TENANT_SESSION_LIMIT_EXCEEDED"
    _, other = await open_session(nursery, scheduler, GLOBEX)
    assert other["type"] == "session_init_ack"  # another tenant's share is its own
    # An implicit session counts too.
    await third.send(type="utterance", session_id="gw-1", utterance_index=0, src_lang="zh", tgt_lang="en",
                     audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
    assert (await third.recv_type("error"))["code"] == "TENANT_SESSION_LIMIT_EXCEEDED"
    await first.ws.aclose()
    await trio.sleep(0.1)
    await third.send(type="session_init", src_lang="zh", tgt_lang="en")
    assert (await third.recv_type("session_init_ack"))["session_id"]
    assert scheduler.session_directory.tenant_sessions("acme") == 2
