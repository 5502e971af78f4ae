"""The top nursery: the registry, the WebSocket listener and the HTTP listener, started and stopped together."""

from __future__ import annotations

import functools
import logging

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import WebSocketRequest, serve_websocket

from trioscheduler.app import Scheduler, log_listening
from trioscheduler.config import Config
from trioscheduler.http import make_app
from trioscheduler.transport import WebSocketTransport, release_accepted_request

log = logging.getLogger("trioscheduler.server")

SESSION_PATH = "/ws/session"
NODE_PATH = "/ws/node"


@attrs.frozen
class Listening:
    host: str
    port: int
    http_port: int

    @property
    def session_url(self) -> str:
        return f"ws://{self.host}:{self.port}{SESSION_PATH}"

    @property
    def node_url(self) -> str:
        return f"ws://{self.host}:{self.port}{NODE_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def _hypercorn_config(host: str, port: int, config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.loglevel = "WARNING"
    hc.websocket_max_message_size = config.limits.max_message_bytes
    return hc


def _bound_port(binds: list[str]) -> int:
    return int(binds[0].rsplit(":", 1)[1])


async def serve(
    config: Config,
    *,
    scheduler: Scheduler | None = None,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled. ``task_status.started`` reports the bound ports (port 0 picks free ones)."""
    scheduler = scheduler or Scheduler(config)
    server = config.server
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        if server.port != 0 and server.http_port == server.port:
            app = make_app(scheduler, websockets=True)
            binds = await nursery.start(functools.partial(
                hypercorn_serve, app, _hypercorn_config(server.host, server.port, config)))
            port = http_port = _bound_port(binds)
        else:
            async def handle(request: WebSocketRequest) -> None:
                path = request.path.split("?", 1)[0]
                if path not in (SESSION_PATH, NODE_PATH):
                    await request.reject(404, body=b"unknown path; use /ws/session or /ws/node")
                    return
                transport = WebSocketTransport(await request.accept())
                release_accepted_request(request)
                if path == SESSION_PATH:
                    await scheduler.handle_session(transport)
                else:
                    await scheduler.handle_node(transport)

            ws_server = await nursery.start(functools.partial(
                serve_websocket, handle, server.host, server.port, None,
                message_queue_size=8,
                max_message_size=config.limits.max_message_bytes,
                receive_buffer_size=server.receive_buffer_size,
            ))
            port = ws_server.port
            binds = await nursery.start(functools.partial(
                hypercorn_serve, make_app(scheduler), _hypercorn_config(server.host, server.http_port, config)))
            http_port = _bound_port(binds)
        listening = Listening(server.host, port, http_port)
        log_listening("sessions", listening.session_url)
        log_listening("nodes", listening.node_url)
        log_listening("http", listening.http_url)
        task_status.started(listening)
