"""With authentication on, the HTTP API's admin endpoints, its detailed reads and the gateway need their
credentials; /health, /ready, /metrics and the dashboard page stay open (issue 10 point 1, wired into issue 11's
and issue 14's routes)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import trio

from tests.wire import pcm, start_daemon
from trioscheduler.config import Config

ADMIN = "admin-secret-1"
API_KEY = "client-key-1"
NODE_TOKEN = "node-token-1"


def _config(make_config: Callable[..., Config]) -> Config:
    return make_config(auth={"node_tokens": [NODE_TOKEN], "admin_tokens": [ADMIN], "api_keys": {API_KEY: "tenant-a"}})


async def test_admin_reads_and_writes_need_the_admin_token(nursery: trio.Nursery,
                                                          make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, _config(make_config))
    base = daemon.listening.http_url
    async with httpx.AsyncClient(base_url=base) as http:
        for path in ("/api/v1/stats", "/api/v1/nodes", "/api/v1/sessions", "/api/v1/jobs", "/api/v1/jobs/job-x"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers={"authorization": f"Bearer {API_KEY}"})).status_code == 403, path
        missing = await http.get("/api/v1/nodes")
        assert missing.json()["error"]["code"] == "UNAUTHORIZED"
        assert (await http.get("/api/v1/nodes", headers={"authorization": f"Bearer {ADMIN}"})).status_code == 200
        assert (await http.get(f"/api/v1/stats?token={ADMIN}")).status_code == 200
        assert (await http.post("/api/v1/nodes/node-X/drain")).status_code == 401
        assert (await http.post("/api/v1/nodes/node-X/drain",
                                headers={"authorization": f"Bearer {NODE_TOKEN}"})).status_code == 403
        assert (await http.post("/api/v1/nodes/node-X/drain",
                                headers={"authorization": f"Bearer {ADMIN}"})).status_code == 404  # unknown node
        assert (await http.post("/api/v1/drain")).status_code == 401
        assert not daemon.scheduler.drain.draining
        for path in ("/health", "/ready", "/metrics", "/dashboard"):
            assert (await http.get(path)).status_code == 200, path
        drained = await http.post("/api/v1/drain", headers={"authorization": f"Bearer {ADMIN}"})
    assert drained.status_code == 202 and daemon.scheduler.drain.draining


async def test_the_gateway_needs_an_api_key(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, _config(make_config))
    body = {"audio": "", "src_lang": "zh", "tgt_lang": "en"}
    async with httpx.AsyncClient(base_url=daemon.listening.http_url) as http:
        missing = await http.post("/v1/speech/translate", json=body)
        wrong = await http.post("/v1/speech/translate", json=body, headers={"authorization": f"Bearer {ADMIN}"})
        admitted = await http.post(f"/v1/speech/translate?token={API_KEY}",
                                   json={**body, "audio": base64.b64encode(pcm(10)).decode()},
                                   timeout=30)
    assert (missing.status_code, missing.json()["code"]) == (401, "UNAUTHORIZED")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "FORBIDDEN")
    # Past the key check: no node serves zh→en here, so the request fails for that reason, not for its key.
    assert (admitted.status_code, admitted.json()["code"]) == (503, "NO_AVAILABLE_NODE")
