"""``python -m trioscheduler [serve|demo]``: flags → Config, then run until a signal or a finished drain.

SIGTERM drains (trioscheduler/drain.py: sessions close at an utterance boundary, then the process exits 0); SIGINT,
or a second signal while draining, stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import trio

from trioscheduler.auth import check_bind
from trioscheduler.config import Config, ConfigError, load_config
from trioscheduler.logs import configure_logging, emit
from trioscheduler.runtime import FD_RESERVE, fd_limit_fits, raise_fd_limit, tune_garbage_collector
from trioscheduler.tls import server_ssl_context

log = logging.getLogger("trioscheduler")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trioscheduler",
                                     description="Speech-translation scheduler (lingua-compatible) on Trio.")
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "demo"),
                        help="serve: run the daemon (default); demo: scheduler + 3 simulated nodes + 2 clients")
    parser.add_argument("--host", help="listen address (server.host, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="WebSocket port (server.port, default 5010; 0 picks a free one)")
    parser.add_argument("--http-port", type=int, help="HTTP port (server.http_port, default 5011)")
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument("--log-level", help="debug, info, warning, error (logging.level, default info)")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help="text: event key=value lines; json: one JSON object per line (logging.format)")
    parser.add_argument("--tls-cert", metavar="PEM",
                        help="certificate chain: serve wss:// and https:// (server.tls_cert)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (server.tls_key)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="allow a non-loopback --host without any credential configured (auth.insecure; "
                             "warns at start and every hour)")
    parser.add_argument("--node-mode", choices=("every_job", "original"), default="every_job",
                        help="demo only: simulated nodes that answer every job, or like the original's node agent")
    parser.add_argument("--speech", action="store_true",
                        help="demo only: a node with real speech engines instead (pip install -e '.[speech]')")
    parser.add_argument("--keep", action="store_true",
                        help="demo only: once the clients are done, keep serving (dashboard included) until Ctrl-C")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, section, key in (("host", "server", "host"), ("port", "server", "port"),
                               ("http_port", "server", "http_port"), ("log_level", "logging", "level"),
                               ("log_format", "logging", "format"),
                               ("tls_cert", "server", "tls_cert"), ("tls_key", "server", "tls_key"),
                               ("insecure", "auth", "insecure")):
        value = getattr(args, flag)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_config(args.config, overrides=overrides)


def apply_fd_limit(config: Config) -> None:
    """Raise the soft descriptor limit, log the connection cap the daemon runs with, warn if it cannot fit."""
    soft, hard = raise_fd_limit()
    max_connections = config.limits.max_connections
    emit(log, logging.INFO, "connection_cap", max_connections=max_connections, fd_soft_limit=soft,
         fd_hard_limit=hard)
    if not fd_limit_fits(max_connections, soft):
        emit(log, logging.WARNING, "connection_cap_exceeds_fd_limit", max_connections=max_connections,
             fd_soft_limit=soft, fd_reserve=FD_RESERVE,
             advice="lower limits.max_connections or raise the hard RLIMIT_NOFILE (ulimit -Hn)")


async def run_until_signal(config: Config) -> None:
    from trioscheduler.app import Scheduler
    from trioscheduler.drain import watch_signals
    from trioscheduler.server.listener import serve

    apply_fd_limit(config)
    scheduler = Scheduler(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def serve_then_stop(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                await serve(config, scheduler=scheduler, task_status=task_status)
                print("trioscheduler: drained, exiting", flush=True)
                nursery.cancel_scope.cancel()  # serve returns only when a drain has finished

            listening = await nursery.start(serve_then_stop)
            tuning = tune_garbage_collector(config.server)
            print(f"trioscheduler listening: sessions {listening.session_url} nodes {listening.node_url} "
                  f"http {listening.http_url}", flush=True)
            emit(log, logging.INFO, "runtime_tuned", **tuning)
            await watch_signals(signals, scheduler.drain, nursery.cancel_scope)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.command == "serve":
            check_bind(config)  # serve() checks both again; here they end the process with a message
            server_ssl_context(config.server)
    except ConfigError as exc:
        print(f"trioscheduler: configuration error: {exc}", file=sys.stderr)
        return 2
    # The demo prints its own story: stage lines would drown it.
    level = "warning" if args.command == "demo" and args.log_level is None else config.logging.level
    configure_logging(level, queue_records=config.limits.max_log_queue_records, log_format=config.logging.format)
    if args.command == "demo" and args.speech:
        from trioscheduler.speech.demo import run_speech_demo

        return trio.run(run_speech_demo, config, args.keep)
    if args.command == "demo":
        from trioscheduler.demo import run_demo

        return trio.run(run_demo, config, args.node_mode, args.keep)
    trio.run(run_until_signal, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
