"""The gateway's shared state: the per-tenant rate limiter, the bound on requests running at once, its counters,
and the one function that says who the caller is.

One ``Gateway`` serves both ``POST /v1/speech/translate`` (http.py) and ``WS /v1/stream`` (the door), so a
tenant's rate and the concurrency bound are shared by both.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import trio

from trioscheduler.auth import AmbiguousCredential, Credentials, Refusal, presented_credential
from trioscheduler.config import Config
from trioscheduler.gateway.oneshot import run_job
from trioscheduler.gateway.ratelimit import TokenBuckets
from trioscheduler.gateway.translate import TranslateRequest, error_body, job_spec
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry.requests import JobSpec, RegistryClient

#: The rate limiter's key for callers without a tenant (authentication off).
ANONYMOUS_TENANT = ""


def caller_principal(credentials: Credentials, scope: Mapping[str, Any]) -> Principal | Refusal:
    """Who makes an HTTP request: the principal of its API key (``Authorization: Bearer`` or the ``token`` query
    parameter), ANONYMOUS while authentication is off, or why it is refused (401 without a key, 403 for another)."""
    authorization = [value.decode("utf-8", "surrogateescape") for name, value in scope.get("headers") or ()
                     if name.lower() == b"authorization"]
    try:
        presented = presented_credential(authorization, (scope.get("query_string") or b"").decode("latin-1"))
    except AmbiguousCredential:
        return Refusal.WRONG if credentials.enabled else ANONYMOUS
    return credentials.session(presented)


class Gateway:
    def __init__(self, registry: RegistryClient, config: Config) -> None:
        self._registry = registry
        self.config = config
        self.credentials = Credentials.from_config(config.auth)
        gateway = config.gateway
        self.limiter = TokenBuckets(gateway.requests_per_second, gateway.burst, gateway.max_tenants)
        self.running = 0
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def registry(self) -> RegistryClient:
        return self._registry

    def admit(self, principal: Principal) -> tuple[int, dict[str, Any]] | None:
        """Refusal (HTTP status, body) of one more request from ``principal`` by its tenant's rate, or None."""
        tenant = principal.tenant_id or ANONYMOUS_TENANT
        now = trio.current_time()
        if not self.limiter.take(tenant, now):
            self.counters["gateway_rate_limited"] += 1
            rate = self.config.gateway.requests_per_second
            return 429, error_body(ErrorCode.RATE_LIMITED,
                                   f"more than gateway.requests_per_second ({rate:g}) requests for this tenant",
                                   retry_after_s=round(self.limiter.retry_after(tenant, now), 3))
        return None

    def job(self, request: TranslateRequest, principal: Principal, session_id: str, index: int) -> JobSpec:
        """The job of one request; raises ProtocolError naming the field at fault."""
        return job_spec(request, session_id, index, trio.current_time(), self.config, principal.tenant_id)

    async def run(self, spec: JobSpec) -> Any:
        """Run one job; its outcome message (an ``error`` GATEWAY_BUSY beyond ``gateway.max_concurrent_requests``).
        The caller ends the job's session with the registry when done."""
        limit = self.config.gateway.max_concurrent_requests
        if self.running >= limit:
            self.counters["gateway_busy"] += 1
            return m.ErrorMessage(code=ErrorCode.GATEWAY_BUSY,
                                  message=f"gateway.max_concurrent_requests ({limit}) requests are running")
        self.running += 1
        try:
            self.counters["gateway_requests"] += 1
            config = self.config
            now = trio.current_time()
            outcome = await run_job(
                self._registry, spec,
                selection_deadline=now + config.scheduler.selection_deadline_ms / 1000.0,
                deadline=now + config.gateway.request_timeout_seconds)
            self.counters[f"gateway_outcome_{outcome.TYPE}"] += 1
            return outcome
        finally:
            self.running -= 1
