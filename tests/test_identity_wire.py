"""Issue 10, points 2 to 4 over real sockets with real credentials: the door authenticates each socket, and then a
node_id cannot be taken over by another node token, the tenant of the API key reaches job_assign, and a tenant's
sessions are bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio_websocket

from tests.auth_wire import bearer, open_peer
from tests.wire import Daemon, b64, node_register, pcm, result_for, start_daemon
from trioscheduler.config import Config
from trioscheduler.protocol.errors import CloseCode

TOKEN_A, TOKEN_B = "node-token-a-0123456789", "node-token-b-0123456789"
KEY = "api-key-acme-0123456789"
AUTH = {"node_tokens": [TOKEN_A, TOKEN_B], "api_keys": {KEY: "acme"}}


@pytest.fixture
async def daemon(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config(auth=AUTH, limits={"sessions_per_tenant": 2}))


async def test_another_node_token_cannot_take_over_a_live_node_id(daemon: Daemon) -> None:
    """Before the defence the impostor replaced the real node and its answers reached the clients labelled with
    the real node's id."""
    async with open_peer(daemon.node_url, bearer(TOKEN_A)) as real, \
            open_peer(daemon.session_url, bearer(KEY)) as client:
        await real.send(**node_register("gpu-1"))
        await real.recv_type("node_register_ack")
        await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16",
                          tenant_id="not-acme")
        sid = (await client.recv_type("session_init_ack"))["session_id"]
        await client.send(type="utterance", session_id=sid, utterance_index=0, manual_cut=True,
                          audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
        assign = await real.recv_type("job_assign")
        assert assign["tenant_id"] == "acme"
        async with open_peer(daemon.node_url, bearer(TOKEN_B)) as impostor:
            await impostor.send(**node_register("gpu-1"))
            refused = await impostor.recv_type("error")
            assert refused["code"] == "NODE_ID_IN_USE"
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await impostor.recv()
            assert closed.value.reason.code == CloseCode.NODE_ID_IN_USE
        await real.send(**result_for(assign, node_id="gpu-1"))
        result = await client.recv_type("translation_result")
        assert result["node_id"] == "gpu-1" and result["text_translated"] == "translated 0"


async def test_the_same_node_token_replaces_its_connection(daemon: Daemon) -> None:
    async with open_peer(daemon.node_url, bearer(TOKEN_A)) as old:
        await old.send(**node_register("gpu-1"))
        await old.recv_type("node_register_ack")
        async with open_peer(daemon.node_url, bearer(TOKEN_A)) as new:
            await new.send(**node_register("gpu-1"))
            await new.recv_type("node_register_ack")
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await old.recv()
            assert closed.value.reason.code == CloseCode.NORMAL


async def test_a_tenants_sessions_are_bounded_over_the_wire(daemon: Daemon) -> None:
    async with open_peer(daemon.session_url, bearer(KEY)) as first, \
            open_peer(daemon.session_url, bearer(KEY)) as second, \
            open_peer(daemon.session_url, bearer(KEY)) as third:
        for client in (first, second):
            await client.send(type="session_init", src_lang="zh", tgt_lang="en")
            await client.recv_type("session_init_ack")
        await third.send(type="session_init", src_lang="zh", tgt_lang="en")
        assert (await third.recv_type("error"))["code"] == "TENANT_SESSION_LIMIT_EXCEEDED"
