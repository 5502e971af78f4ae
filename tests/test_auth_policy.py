"""Issue 10, point 1: the pure parts of trioscheduler/auth.py (credentials, what a request presents, the bind
policy) and the hourly warning of an open public bind, under MockClock."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trioscheduler.auth import (
    AmbiguousCredential,
    BindPolicy,
    Credentials,
    ExemptAddresses,
    InsecureBind,
    Refusal,
    admin_authorized,
    asgi_admin_refusal,
    bearer_token,
    check_bind,
    credential_id,
    is_loopback_host,
    presented_credential,
    warn_insecure,
)
from trioscheduler.config import AuthConfig, Config, ConfigError, LimitsConfig, build_config, config_with
from trioscheduler.principal import ANONYMOUS, Principal

secrets = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: not s.startswith("sha256:"))


@given(secret=secrets, other=secrets)
def test_a_secret_in_clear_or_hashed_admits_the_same_principal_and_nothing_else(secret: str, other: str) -> None:
    hashed = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    clear = Credentials.from_config(AuthConfig(node_tokens=(secret,), api_keys={secret: "t"}))
    digest = Credentials.from_config(AuthConfig(node_tokens=(hashed,), api_keys={hashed: "t"}))
    assert clear == digest
    principal = clear.node(secret)
    assert isinstance(principal, Principal) and principal.tenant_id is None and principal.credential
    assert principal.credential == credential_id(hashlib.sha256(secret.encode()).digest())
    assert clear.session(secret) == Principal(principal.credential, "t")
    assert clear.node(other) == (Refusal.WRONG if other != secret else principal)
    assert clear.node(None) is Refusal.MISSING and clear.admin(secret) is Refusal.WRONG


def test_credentials_hold_no_secret_and_ids_are_stable_and_distinct() -> None:
    auth = AuthConfig(node_tokens=("n1", "n2"), api_keys={"k1": "a", "k2": "a"}, admin_tokens=("x",))
    credentials = Credentials.from_config(auth)
    assert "n1" not in repr(auth) and "k1" not in repr(auth) and "'x'" not in repr(auth)
    assert credentials == Credentials.from_config(auth)
    ids = {credentials.node("n1"), credentials.node("n2"), credentials.session("k1"), credentials.session("k2")}
    assert len({p.credential for p in ids if isinstance(p, Principal)}) == 4
    assert credential_id(hashlib.sha256(b"n1").digest()) == credentials.node("n1").credential  # type: ignore[union-attr]


def test_authentication_off_means_anonymous_everywhere() -> None:
    off = Credentials.from_config(AuthConfig())
    assert not off.enabled
    assert off.node(None) is ANONYMOUS and off.session("x") is ANONYMOUS and off.admin(None) is None
    assert admin_authorized(AuthConfig(), None)


def test_admin_authorized_takes_the_header_or_the_query_token() -> None:
    auth = AuthConfig(node_tokens=("n",), admin_tokens=("adm",))
    assert admin_authorized(auth, "Bearer adm") and admin_authorized(auth, "bearer   adm ")
    assert admin_authorized(auth, None, "adm") and admin_authorized(Credentials.from_config(auth), None, "adm")
    assert not admin_authorized(auth, None) and not admin_authorized(auth, "Bearer n")
    assert not admin_authorized(auth, "Basic adm") and not admin_authorized(auth, "adm")
    credentials = Credentials.from_config(auth)
    scope = {"headers": [(b"Authorization", b"Bearer adm")], "query_string": b""}
    assert asgi_admin_refusal(credentials, scope) is None
    assert asgi_admin_refusal(credentials, {"headers": [], "query_string": b"token=adm"}) is None
    assert asgi_admin_refusal(credentials, {"headers": [], "query_string": b""}) is Refusal.MISSING
    assert asgi_admin_refusal(credentials, {"headers": [], "query_string": b"token=adm&token=n"}) is Refusal.WRONG


@pytest.mark.parametrize(("value", "token"), [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"), ("Bearer", None), ("Bearer ", None),
    ("Basic abc", None), ("abc", None), (None, None),
])
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


def test_presented_credential_refuses_ambiguity() -> None:
    assert presented_credential([], "token=a%2Bb") == "a+b"
    assert presented_credential(["Bearer x"], "token=x") == "x"
    assert presented_credential([], "other=1") is None and presented_credential([], "token=") is None
    for headers, query in ((["Bearer x", "Bearer x"], ""), ([], "token=a&token=a"), (["Bearer x"], "token=y")):
        with pytest.raises(AmbiguousCredential):
            presented_credential(headers, query)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.2", False),
    ("example.com", False), ("localhost.example.com", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_check_bind() -> None:
    assert check_bind(Config()) is BindPolicy.LOOPBACK_OPEN
    public = config_with(Config(), server={"host": "0.0.0.0"})
    with pytest.raises(InsecureBind, match=r"refusing to listen on '0\.0\.0\.0' without authentication") as info:
        check_bind(public)
    assert "--insecure" in str(info.value) and isinstance(info.value, ConfigError)
    assert check_bind(config_with(public, auth={"insecure": True})) is BindPolicy.INSECURE_OPEN
    assert check_bind(config_with(public, auth={"admin_tokens": ["a"]})) is BindPolicy.AUTHENTICATED
    assert check_bind(config_with(Config(), auth={"node_tokens": ["a"]})) is BindPolicy.AUTHENTICATED


def test_auth_config_errors_name_the_key_and_never_show_a_secret() -> None:
    for section in ({"node_tokens": ["sha256:abc-secret"]}, {"admin_tokens": ["ok", ""]},
                    {"api_keys": {"the-secret": ""}}, {"api_keys": {"sha256:the-secret": "t"}},
                    {"node_tokens": "the-secret"}, {"api_keys": ["the-secret"]}):
        with pytest.raises(ConfigError) as info:
            build_config({"auth": section})
        assert f"auth.{next(iter(section))}" in str(info.value) and "secret" not in str(info.value).replace(
            "secrets", "")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def auth_log() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("trioscheduler.auth")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_an_open_public_bind_is_warned_at_start_and_every_hour(autojump_clock: trio.abc.Clock,
                                                                     auth_log: _Lines) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(warn_insecure, "0.0.0.0")
        await trio.sleep(1)
        assert len(auth_log.lines) == 1 and auth_log.lines[0].startswith("insecure_bind host=0.0.0.0")
        await trio.sleep(3600 * 3)
        assert len(auth_log.lines) == 4
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("host", "exempt"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True), ("10.1.2.3", True),
    ("10.1.2.4", False), ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("fd00::1", False),
    ("unknown", False),
])
def test_exempt_addresses(host: str, exempt: bool) -> None:
    exempted = ExemptAddresses.from_config(LimitsConfig(
        connections_per_address_exempt=("127.0.0.0/8", "::1", "10.1.2.3")))
    assert (host in exempted) is exempt


def test_exempt_addresses_must_be_networks() -> None:
    with pytest.raises(ConfigError, match=r"limits\.connections_per_address_exempt must be a list of IP addresses"):
        build_config({"limits": {"connections_per_address_exempt": ["10.0.0.0/33"]}})
