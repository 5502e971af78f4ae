"""What a node can serve, derived from what it reports: the exact rule docs/protocol.md describes.

The original joined pools only from asr × semantic languages, so a node without a running semantic service
served nothing, and it dropped nodes that sent the legacy ``supported_language_pairs``. Here every report form
counts and readiness comes from ``capability_by_type`` (or running ``installed_services``).

A claim is bounded before anything is crossed (``[limits]`` max_node_languages, max_node_pairs, max_node_services,
max_language_code_chars): the sizes are counted first, so the work of a derivation is linear in what the node
sent and at most proportional to ``max_node_pairs``. Derivation is pure and runs in the node's own connection
task; the registry only re-indexes the keys a capability carries.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from trioscheduler.config import LimitsConfig
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.protocol.messages import (
    CapabilityByType,
    InstalledService,
    LanguageCapabilities,
    NodeHeartbeat,
    NodeRegister,
)

ANY_SOURCE = ""
#: What a node reports about itself, in derive_capability's argument order; a heartbeat may repeat any of them.
CAPABILITY_FIELDS = ("language_capabilities", "capability_by_type", "installed_services", "supported_language_pairs")
DEFAULT_LIMITS = LimitsConfig()


def normalise_language(code: str) -> str:
    return code.strip().lower()


def direction_key(src: str, tgt: str) -> str:
    """Index of nodes serving src→tgt; ``src`` empty (ANY_SOURCE) means "auto": anything into tgt."""
    return f"{src}>{tgt}"


def pool_name(lang_a: str, lang_b: str) -> str:
    """The field report's pool model: the sorted language set, e.g. {zh, en} → "en-zh"."""
    return "-".join(sorted((lang_a, lang_b)))


def _index_keys(pairs: frozenset[tuple[str, str]]) -> frozenset[str]:
    """direction_key(s, t) and direction_key(ANY_SOURCE, t) of every pair, pool_name(s, t) of every two-way one
    (written out: this runs once per pair a node claims)."""
    keys = {f"{src}>{tgt}" for src, tgt in pairs}
    keys.update({f"{ANY_SOURCE}>{tgt}" for _, tgt in pairs})
    keys.update(f"{src}-{tgt}" for src, tgt in pairs if src < tgt and (tgt, src) in pairs)
    return frozenset(keys)


@attrs.frozen
class NodeCapability:
    """What a node can serve. Its index keys are computed once, where the capability is made (the node's
    connection task), so the registry only compares key sets."""

    #: None: the node reported no readiness at all, so every service is assumed ready.
    ready_services: frozenset[str] | None
    #: Directed (src, tgt) pairs; src == tgt means recognition in one language (no translation).
    pairs: frozenset[tuple[str, str]]
    _keys: frozenset[str] = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(lambda self: _index_keys(self.pairs), takes_self=True))
    _pools: frozenset[str] = attrs.field(
        init=False, eq=False, repr=False,
        default=attrs.Factory(lambda self: frozenset(key for key in self._keys if ">" not in key), takes_self=True))

    def index_keys(self) -> frozenset[str]:
        """Every selection index the node belongs to: directions, "auto" targets and two-way pools."""
        return self._keys

    def pools(self) -> frozenset[str]:
        """The two-way pools among the index keys."""
        return self._pools

    def serves(self, services: Iterable[str]) -> bool:
        return self.ready_services is None or all(s in self.ready_services for s in services)


def ready_services(
    capability_by_type: Sequence[CapabilityByType] | None,
    installed_services: Sequence[InstalledService] | None,
) -> frozenset[str] | None:
    if capability_by_type is not None:
        return frozenset(c.type.strip().lower() for c in capability_by_type if c.ready)
    if installed_services is not None:
        return frozenset(s.type.strip().lower() for s in installed_services
                         if s.status is None or s.status.strip().lower() == "running")
    return None


def _limit_exceeded(field: str, what: str, count: int, key: str, limit: int) -> ProtocolError:
    return ProtocolError(f"{field} {what} {count}; at most limits.{key} = {limit}", field=field,
                         code=ErrorCode.CAPABILITY_LIMIT_EXCEEDED)


def check_claim_sizes(
    languages: LanguageCapabilities | None,
    capability_by_type: Sequence[CapabilityByType] | None,
    installed_services: Sequence[InstalledService] | None,
    extra_pairs: Sequence[Any] | None,
    limits: LimitsConfig,
) -> None:
    """Refuse a claim whose lists are too long, by their lengths alone (nothing is iterated)."""
    for name, items in (("capability_by_type", capability_by_type), ("installed_services", installed_services)):
        if items is not None and len(items) > limits.max_node_services:
            raise _limit_exceeded(name, "lists services:", len(items), "max_node_services", limits.max_node_services)
    if languages is not None:
        for name in ("asr_languages", "tts_languages", "semantic_languages"):
            codes = getattr(languages, name)
            if codes is not None and len(codes) > limits.max_node_languages:
                raise _limit_exceeded(f"language_capabilities.{name}", "lists languages:", len(codes),
                                      "max_node_languages", limits.max_node_languages)
    legacy = (("language_capabilities.supported_language_pairs",
               None if languages is None else languages.supported_language_pairs),
              ("supported_language_pairs", extra_pairs))
    for name, items in legacy:
        if items is not None and len(items) > limits.max_node_pairs:
            raise _limit_exceeded(name, "lists pairs:", len(items), "max_node_pairs", limits.max_node_pairs)


def _language(code: str, where: str, limits: LimitsConfig) -> str:
    if len(code) > limits.max_language_code_chars:
        raise _limit_exceeded(where, "is a language code of length", len(code), "max_language_code_chars",
                              limits.max_language_code_chars)
    return normalise_language(code)


def _legacy_pairs(raw: Sequence[Any], limits: LimitsConfig,
                  path: str = "language_capabilities.supported_language_pairs") -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, str) and item.count(":") == 1:
            src, tgt = item.split(":")
        elif isinstance(item, dict) and isinstance(item.get("src"), str) and isinstance(item.get("tgt"), str):
            src, tgt = item["src"], item["tgt"]
        else:
            raise ProtocolError(
                f"{where} must be \"src:tgt\" or {{\"src\": ..., \"tgt\": ...}}, got {item!r:.80}",
                field=where, code=ErrorCode.INVALID_CAPABILITY_SCHEMA,
            )
        src, tgt = _language(src, where, limits), _language(tgt, where, limits)
        if not src or not tgt:
            raise ProtocolError(f"{where} has an empty language", field=where, code=ErrorCode.INVALID_CAPABILITY_SCHEMA)
        pairs.add((src, tgt))
    return pairs


def derive_capability(
    languages: LanguageCapabilities | None,
    capability_by_type: Sequence[CapabilityByType] | None,
    installed_services: Sequence[InstalledService] | None,
    extra_pairs: Sequence[Any] | None = None,
    limits: LimitsConfig = DEFAULT_LIMITS,
) -> NodeCapability:
    """Sources are the ASR languages (if ASR is ready); targets are the TTS and semantic languages (each if its
    service is ready), or, when neither gives any, the ASR languages themselves (if NMT is ready). Legacy explicit
    pairs are added as they are.

    Raises ProtocolError CAPABILITY_LIMIT_EXCEEDED (naming the field) for a claim over ``limits``, checked before
    any pair is made: list lengths first, then |sources| × |targets|; INVALID_CAPABILITY_SCHEMA for a malformed
    legacy pair."""
    check_claim_sizes(languages, capability_by_type, installed_services, extra_pairs, limits)
    ready = ready_services(capability_by_type, installed_services)

    def usable(service: str, field: str) -> set[str]:
        codes: list[str] | None = getattr(langs, field)
        if not codes or (ready is not None and service not in ready):
            return set()
        return {_language(code, f"language_capabilities.{field}[{i}]", limits)
                for i, code in enumerate(codes) if code.strip()}

    langs = languages or LanguageCapabilities()
    sources = usable("asr", "asr_languages")
    targets = usable("tts", "tts_languages") | usable("semantic", "semantic_languages")
    if not targets and (ready is None or "nmt" in ready):
        targets = set(sources)
    if len(sources) * len(targets) > limits.max_node_pairs:
        raise _limit_exceeded("language_capabilities", "derives language pairs (asr × targets):",
                              len(sources) * len(targets), "max_node_pairs", limits.max_node_pairs)
    pairs = {(src, tgt) for src in sources for tgt in targets}
    if langs.supported_language_pairs:
        pairs |= _legacy_pairs(langs.supported_language_pairs, limits)
    if extra_pairs:
        pairs |= _legacy_pairs(extra_pairs, limits, "supported_language_pairs")
    if len(pairs) > limits.max_node_pairs:
        raise _limit_exceeded("supported_language_pairs", "with the derived pairs makes language pairs:",
                              len(pairs), "max_node_pairs", limits.max_node_pairs)
    return NodeCapability(ready_services=ready, pairs=frozenset(pairs))


@attrs.frozen
class CapabilityClaim:
    """What one node socket last reported about itself (the CAPABILITY_FIELDS as decoded, in that order) and the
    capability derived from it. A heartbeat that omits a field keeps the previous value."""

    reported: tuple[Any, ...]
    capability: NodeCapability


def _derive(reported: tuple[Any, ...], limits: LimitsConfig) -> NodeCapability:
    languages, capability_by_type, installed_services, extra_pairs = reported
    return derive_capability(languages, capability_by_type, installed_services, extra_pairs, limits)


def claim_of_register(message: NodeRegister, limits: LimitsConfig = DEFAULT_LIMITS) -> CapabilityClaim:
    """The claim of a node_register (every field as sent). Raises ProtocolError as derive_capability does."""
    reported = tuple(getattr(message, field) for field in CAPABILITY_FIELDS)
    return CapabilityClaim(reported, _derive(reported, limits))


def claim_of_heartbeat(previous: CapabilityClaim | None, message: NodeHeartbeat,
                       limits: LimitsConfig = DEFAULT_LIMITS) -> CapabilityClaim | None:
    """The claim after a heartbeat: its fields over the previous ones. None when nothing changed (no
    derivation). Raises ProtocolError as derive_capability does; the previous claim then stands."""
    before = previous.reported if previous is not None else (None,) * len(CAPABILITY_FIELDS)
    reported = tuple(old if new is None else new
                     for old, new in zip(before, (getattr(message, field) for field in CAPABILITY_FIELDS), strict=True))
    if previous is not None and reported == previous.reported:
        return None
    return CapabilityClaim(reported, _derive(reported, limits))


def describe_keys(keys: Iterable[str], shown: int = 8) -> str:
    """A log field of bounded length: the first ``shown`` keys in order, and how many more there are."""
    keys = list(keys)
    first = heapq.nsmallest(shown, keys)
    if not first:
        return "none"
    more = len(keys) - len(first)
    return ",".join(first) + (f",+{more}" if more else "")
