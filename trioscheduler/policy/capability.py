"""What a node can serve, derived from what it reports: the exact rule docs/protocol.md describes.

The original joined pools only from asr × semantic languages, so a node without a running semantic service
served nothing (F-17), and it dropped nodes that sent the legacy ``supported_language_pairs`` (F-13). Here every
report form counts and readiness comes from ``capability_by_type`` (or running ``installed_services``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.protocol.messages import CapabilityByType, InstalledService, LanguageCapabilities

ANY_SOURCE = ""


def normalise_language(code: str) -> str:
    return code.strip().lower()


def direction_key(src: str, tgt: str) -> str:
    """Index of nodes serving src→tgt; ``src`` empty (ANY_SOURCE) means "auto": anything into tgt."""
    return f"{src}>{tgt}"


def pool_name(lang_a: str, lang_b: str) -> str:
    """The field report's pool model: the sorted language set, e.g. {zh, en} → "en-zh"."""
    return "-".join(sorted((lang_a, lang_b)))


@attrs.frozen
class NodeCapability:
    #: None: the node reported no readiness at all, so every service is assumed ready.
    ready_services: frozenset[str] | None
    #: Directed (src, tgt) pairs; src == tgt means recognition in one language (no translation).
    pairs: frozenset[tuple[str, str]]

    def index_keys(self) -> frozenset[str]:
        """Every selection index the node belongs to: directions, "auto" targets and two-way pools."""
        keys: set[str] = set()
        for src, tgt in self.pairs:
            keys.add(direction_key(src, tgt))
            keys.add(direction_key(ANY_SOURCE, tgt))
            if src != tgt and (tgt, src) in self.pairs:
                keys.add(pool_name(src, tgt))
        return frozenset(keys)

    def pools(self) -> frozenset[str]:
        return frozenset(key for key in self.index_keys() if ">" not in key)

    def serves(self, services: Iterable[str]) -> bool:
        return self.ready_services is None or all(s in self.ready_services for s in services)


def ready_services(
    capability_by_type: Sequence[CapabilityByType] | None,
    installed_services: Sequence[InstalledService] | None,
) -> frozenset[str] | None:
    if capability_by_type is not None:
        return frozenset(c.type.strip().lower() for c in capability_by_type if c.ready)
    if installed_services is not None:
        return frozenset(
            s.type.strip().lower() for s in installed_services if s.status is None or s.status.strip().lower() == "running"
        )
    return None


def _legacy_pairs(raw: Sequence[Any], path: str = "language_capabilities.supported_language_pairs",
                  ) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, str) and item.count(":") == 1:
            src, tgt = item.split(":")
        elif isinstance(item, dict) and isinstance(item.get("src"), str) and isinstance(item.get("tgt"), str):
            src, tgt = item["src"], item["tgt"]
        else:
            raise ProtocolError(
                f"{where} must be \"src:tgt\" or {{\"src\": ..., \"tgt\": ...}}, got {item!r}",
                field=where, code=ErrorCode.INVALID_CAPABILITY_SCHEMA,
            )
        src, tgt = normalise_language(src), normalise_language(tgt)
        if not src or not tgt:
            raise ProtocolError(f"{where} has an empty language", field=where, code=ErrorCode.INVALID_CAPABILITY_SCHEMA)
        pairs.add((src, tgt))
    return pairs


def derive_capability(
    languages: LanguageCapabilities | None,
    capability_by_type: Sequence[CapabilityByType] | None,
    installed_services: Sequence[InstalledService] | None,
    extra_pairs: Sequence[Any] | None = None,
) -> NodeCapability:
    """Sources are the ASR languages (if ASR is ready); targets are the TTS and semantic languages (each if its
    service is ready), or, when neither gives any, the ASR languages themselves (if NMT is ready). Legacy explicit
    pairs are added as they are."""
    ready = ready_services(capability_by_type, installed_services)

    def usable(service: str, langs: list[str] | None) -> set[str]:
        if not langs or (ready is not None and service not in ready):
            return set()
        return {normalise_language(code) for code in langs if code.strip()}

    langs = languages or LanguageCapabilities()
    sources = usable("asr", langs.asr_languages)
    targets = usable("tts", langs.tts_languages) | usable("semantic", langs.semantic_languages)
    if not targets and (ready is None or "nmt" in ready):
        targets = set(sources)
    pairs = {(src, tgt) for src in sources for tgt in targets}
    if langs.supported_language_pairs:
        pairs |= _legacy_pairs(langs.supported_language_pairs)
    if extra_pairs:
        pairs |= _legacy_pairs(extra_pairs, "supported_language_pairs")
    return NodeCapability(ready_services=ready, pairs=frozenset(pairs))
