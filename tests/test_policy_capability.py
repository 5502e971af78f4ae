"""derive_capability and NodeCapability.index_keys/pools: what a node can serve from what it reports, within the
[limits] bounds; claims as a heartbeat updates them."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.refusals import accepted_or_refused
from trioscheduler.config import LimitsConfig
from trioscheduler.policy.capability import (
    NodeCapability,
    claim_of_heartbeat,
    claim_of_register,
    derive_capability,
    describe_keys,
    direction_key,
    pool_name,
)
from trioscheduler.protocol.codec import NODE_CODEC
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.protocol.messages import (
    CapabilityByType,
    InstalledService,
    LanguageCapabilities,
    NodeHeartbeat,
    NodeRegister,
)

ALL = ("asr", "nmt", "tts", "semantic")


def langs(asr=("en", "zh"), tts=("en", "zh"), semantic=("en", "zh"), pairs=None) -> LanguageCapabilities:
    return LanguageCapabilities(
        asr_languages=None if asr is None else list(asr),
        tts_languages=None if tts is None else list(tts),
        semantic_languages=None if semantic is None else list(semantic),
        supported_language_pairs=pairs,
    )


def ready(*types: str, not_ready: tuple[str, ...] = ()) -> list[CapabilityByType]:
    return [CapabilityByType(type=t, ready=True) for t in types] + [
        CapabilityByType(type=t, ready=False, reason="loading") for t in not_ready
    ]


def test_field_report_node_joins_pool_en_zh() -> None:
    cap = derive_capability(langs(), ready(*ALL), None)
    assert cap.pools() == {"en-zh"}
    keys = cap.index_keys()
    assert {"zh>en", "en>zh", "en-zh", ">en", ">zh"} <= keys
    assert ("zh", "en") in cap.pairs and ("en", "zh") in cap.pairs
    assert cap.serves(frozenset({"asr", "nmt", "tts"}))


def test_field_report_node_decoded_from_the_wire() -> None:
    frame = json.dumps({
        "type": "node_register", "version": "2.0.0", "capability_schema_version": "2.0", "platform": "windows",
        "hardware": {"cpu_cores": 8, "memory_gb": 32, "gpus": [{"name": "RTX", "memory_gb": 8}]},
        "installed_models": [], "features_supported": {}, "accept_public_jobs": True,
        "installed_services": [{"service_id": "faster-whisper", "type": "asr", "device": "gpu", "status": "running"}],
        "capability_by_type": [{"type": t, "ready": True, "ready_impl_ids": ["x"]} for t in ALL],
        "language_capabilities": {"asr_languages": ["en", "zh"], "tts_languages": ["en", "zh"],
                                  "semantic_languages": ["en", "zh"], "semantic_core_ready": True},
    })
    msg = NODE_CODEC.decode(frame)
    cap = derive_capability(msg.language_capabilities, msg.capability_by_type, msg.installed_services)
    assert cap.pools() == {"en-zh"}
    assert {"zh>en", "en>zh"} <= cap.index_keys()


@pytest.mark.parametrize("types", [("ASR", "NMT", "TTS", "SEMANTIC"), ("Asr", "nmt", " TTS ", "semantic")])
def test_readiness_types_are_case_insensitive(types: tuple[str, ...]) -> None:
    cap = derive_capability(langs(), ready(*types), None)
    assert cap.pools() == {"en-zh"}
    assert cap.ready_services == frozenset(ALL)
    assert cap.serves(frozenset({"asr", "nmt", "tts"}))


def test_readiness_from_installed_services() -> None:
    services = [InstalledService(type="asr", status="running"), InstalledService(type="nmt", status="running"),
                InstalledService(type="tts", status="running"), InstalledService(type="semantic", status="stopped")]
    cap = derive_capability(langs(), None, services)
    assert cap.ready_services == frozenset({"asr", "nmt", "tts"})
    assert cap.pools() == {"en-zh"}  # TTS gives the targets even without semantic
    stopped_asr = [InstalledService(type="asr", status="error"), InstalledService(type="tts", status="running")]
    assert derive_capability(langs(), None, stopped_asr).pairs == frozenset()


def test_installed_services_status_is_case_insensitive() -> None:
    services = [InstalledService(type="ASR", status="Running"), InstalledService(type="tts", status=" RUNNING "),
                InstalledService(type="nmt", status="Stopped")]
    cap = derive_capability(langs(), None, services)
    assert cap.ready_services == frozenset({"asr", "tts"})
    assert cap.pools() == {"en-zh"}


def test_capability_by_type_wins_over_installed_services() -> None:
    cap = derive_capability(langs(), ready("tts", not_ready=("asr",)), [InstalledService(type="asr", status="running")])
    assert cap.pairs == frozenset()


def test_not_ready_asr_gives_no_pairs() -> None:
    cap = derive_capability(langs(), ready("nmt", "tts", "semantic", not_ready=("asr",)), None)
    assert cap.pairs == frozenset() and cap.pools() == frozenset() and cap.index_keys() == frozenset()
    assert not cap.serves(frozenset({"asr"}))


def test_no_semantic_service_still_gives_pairs_when_tts_is_ready_f17() -> None:
    cap = derive_capability(langs(semantic=None), ready("asr", "nmt", "tts"), None)
    assert cap.pools() == {"en-zh"}
    cap = derive_capability(langs(), ready("asr", "nmt", "tts", not_ready=("semantic",)), None)
    assert cap.pools() == {"en-zh"}
    assert {"zh>en", "en>zh"} <= cap.index_keys()


def test_no_readiness_reported_means_everything_is_ready() -> None:
    cap = derive_capability(langs(), None, None)
    assert cap.ready_services is None
    assert cap.pools() == {"en-zh"}
    assert cap.serves(frozenset(ALL))


def test_nmt_only_targets_fall_back_to_asr_languages() -> None:
    cap = derive_capability(langs(tts=None, semantic=None), ready("asr", "nmt"), None)
    assert cap.pools() == {"en-zh"}
    assert derive_capability(langs(tts=None, semantic=None), ready("asr"), None).pairs == frozenset()


def test_three_languages_give_three_pools() -> None:
    three = ("en", "zh", "ja")
    cap = derive_capability(langs(three, three, three), ready(*ALL), None)
    assert cap.pools() == {"en-ja", "en-zh", "ja-zh"}
    for a, b in itertools.permutations(three, 2):
        assert direction_key(a, b) in cap.index_keys()


def test_languages_are_normalised() -> None:
    cap = derive_capability(langs(asr=(" EN", "Zh "), tts=("en", "ZH", " "), semantic=None), ready(*ALL), None)
    assert cap.pools() == {"en-zh"}


# ------------------------------------------------------------------------------------------------ legacy pairs


def test_legacy_pairs_as_strings_and_objects() -> None:
    lc = LanguageCapabilities(supported_language_pairs=["zh:en", {"src": "en", "tgt": "zh"}])
    cap = derive_capability(lc, None, None)
    assert {("zh", "en"), ("en", "zh")} <= cap.pairs
    assert cap.pools() == {"en-zh"}
    assert {"zh>en", "en>zh"} <= cap.index_keys()


def test_legacy_pairs_one_way_gives_a_direction_but_no_pool() -> None:
    cap = derive_capability(LanguageCapabilities(supported_language_pairs=["ZH : EN"]), None, None)
    assert cap.pairs == {("zh", "en")}
    assert cap.pools() == frozenset()
    assert cap.index_keys() == {"zh>en", ">en"}


def test_legacy_pairs_decoded_from_the_wire_with_uppercase_types() -> None:
    frame = json.dumps({
        "type": "node_register",
        "capability_by_type": [{"type": "ASR", "ready": True}, {"type": "NMT", "ready": True},
                               {"type": "TTS", "ready": True}],
        "language_capabilities": {"supported_language_pairs": ["zh:en", {"src": "en", "tgt": "zh"}]},
    })
    msg = NODE_CODEC.decode(frame)
    cap = derive_capability(msg.language_capabilities, msg.capability_by_type, msg.installed_services)
    assert cap.pools() == {"en-zh"}
    assert cap.serves(frozenset({"asr", "nmt", "tts"}))


@pytest.mark.parametrize("bad", [
    "zhen", "zh:en:fr", ":en", "zh:", " : ", 5, None, ["zh", "en"], {"src": "zh"}, {"src": 1, "tgt": "en"},
    {"source": "zh", "target": "en"}, {"src": "", "tgt": "en"},
])
def test_malformed_legacy_pairs_raise_naming_the_field(bad: object) -> None:
    lc = LanguageCapabilities(supported_language_pairs=["zh:en", bad])
    with pytest.raises(ProtocolError) as info:
        derive_capability(lc, None, None)
    assert info.value.code == ErrorCode.INVALID_CAPABILITY_SCHEMA
    assert info.value.field == "language_capabilities.supported_language_pairs[1]"
    assert info.value.details() == {"field": "language_capabilities.supported_language_pairs[1]"}


# ------------------------------------------------------------------------------------------ properties


lang_sets = st.sets(st.sampled_from(["en", "zh", "ja", "de", "fr"]), max_size=4)


@given(asr=lang_sets, tts=lang_sets, semantic=lang_sets, ready_set=st.none() | st.sets(st.sampled_from(ALL)))
@settings(max_examples=200, deadline=None)
def test_derivation_rule(asr, tts, semantic, ready_set) -> None:
    by_type = None if ready_set is None else ready(*sorted(ready_set), not_ready=tuple(sorted(set(ALL) - ready_set)))
    cap = derive_capability(langs(sorted(asr), sorted(tts), sorted(semantic)), by_type, None)

    def ok(service: str) -> bool:
        return ready_set is None or service in ready_set

    sources = asr if ok("asr") else set()
    targets = (tts if ok("tts") else set()) | (semantic if ok("semantic") else set())
    if not targets and ok("nmt"):
        targets = set(sources)
    assert cap.pairs == {(s, t) for s in sources for t in targets}
    if not ok("asr"):
        assert cap.pairs == frozenset()
    # Every two-way pair is a pool named by the sorted language pair, and nothing else is.
    expected_pools = {pool_name(s, t) for s, t in cap.pairs if s != t and (t, s) in cap.pairs}
    assert cap.pools() == expected_pools
    for key in cap.index_keys():
        assert ">" in key or key in expected_pools


@given(pairs=st.sets(st.tuples(st.sampled_from(["en", "zh", "ja"]), st.sampled_from(["en", "zh", "ja"]))))
@settings(max_examples=100, deadline=None)
def test_index_keys_of_any_pair_set(pairs) -> None:
    cap = NodeCapability(ready_services=None, pairs=frozenset(pairs))
    keys = cap.index_keys()
    for s, t in pairs:
        assert direction_key(s, t) in keys and direction_key("", t) in keys
    assert cap.pools() == {pool_name(s, t) for s, t in pairs if s != t and (t, s) in pairs}
    assert {k for k in keys if ">" in k} == (
        {direction_key(s, t) for s, t in pairs} | {direction_key("", t) for _, t in pairs}
    )


# ------------------------------------------------------------------------------------------ bounds


class Uncounted(list):  # type: ignore[type-arg]
    """A list that fails the test if anything iterates it: a claim over a bound is refused by its length."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("iterated a list that is over its bound")


def test_a_list_over_its_bound_is_refused_by_its_length_alone() -> None:
    limits = LimitsConfig()
    huge = Uncounted(["en"] * 10_000)
    for lc, field in ((LanguageCapabilities(asr_languages=huge), "language_capabilities.asr_languages"),
                      (LanguageCapabilities(tts_languages=huge), "language_capabilities.tts_languages"),
                      (LanguageCapabilities(semantic_languages=huge), "language_capabilities.semantic_languages"),
                      (LanguageCapabilities(supported_language_pairs=huge),
                       "language_capabilities.supported_language_pairs")):
        with pytest.raises(ProtocolError) as info:
            derive_capability(lc, ready(*ALL), None, limits=limits)
        assert info.value.code == ErrorCode.CAPABILITY_LIMIT_EXCEEDED and info.value.field == field
    with pytest.raises(ProtocolError) as info:
        derive_capability(langs(), None, None, extra_pairs=huge, limits=limits)
    assert info.value.field == "supported_language_pairs"
    with pytest.raises(ProtocolError) as info:
        derive_capability(langs(), Uncounted([CapabilityByType(type="asr", ready=True)] * 33), None)
    assert info.value.field == "capability_by_type"
    with pytest.raises(ProtocolError) as info:
        derive_capability(langs(), None, Uncounted([InstalledService(type="asr")] * 33))
    assert info.value.field == "installed_services"


@given(asr=st.integers(0, 12), targets=st.integers(0, 12), max_pairs=st.integers(1, 100),
       legacy=st.lists(st.sampled_from(["x:y", "y:x", "a0:a1"]), max_size=4))
@settings(max_examples=200, deadline=None)
def test_pairs_never_exceed_max_node_pairs(asr: int, targets: int, max_pairs: int, legacy: list[str]) -> None:
    limits = LimitsConfig(max_node_pairs=max_pairs)
    lc = LanguageCapabilities(asr_languages=[f"a{i}" for i in range(asr)],
                              tts_languages=[f"t{i}" for i in range(targets)], supported_language_pairs=legacy)
    cap = accepted_or_refused(derive_capability, lc, ready(*ALL), None, limits=limits)
    if isinstance(cap, ProtocolError):
        assert cap.code == ErrorCode.CAPABILITY_LIMIT_EXCEEDED
        crossed = asr * (targets or asr)  # no targets: NMT makes the ASR languages the targets
        assert crossed > max_pairs or len(legacy) > max_pairs or crossed + len(set(legacy)) > max_pairs
        return
    assert len(cap.pairs) <= max_pairs
    assert len(cap.index_keys()) <= 2 * max_pairs + max_pairs // 2


def test_language_codes_longer_than_the_bound_are_refused() -> None:
    limits = LimitsConfig(max_language_code_chars=5)
    short = derive_capability(langs(asr=("zh-tw",), tts=("en",), semantic=None), None, None, limits=limits)
    assert short.pairs == {("zh-tw", "en")}
    with pytest.raises(ProtocolError) as info:
        derive_capability(langs(asr=("en", "zh-Hant"), tts=("en",), semantic=None), None, None, limits=limits)
    assert info.value.field == "language_capabilities.asr_languages[1]"
    with pytest.raises(ProtocolError) as info:
        derive_capability(langs(pairs=["en:zh", "en:zh-Hant"]), None, None, limits=limits)
    assert info.value.field == "language_capabilities.supported_language_pairs[1]"
    assert info.value.code == ErrorCode.CAPABILITY_LIMIT_EXCEEDED


# ------------------------------------------------------------------------------------------ claims


def test_heartbeat_claim_keeps_omitted_fields_and_is_none_when_nothing_changed() -> None:
    register = NodeRegister(language_capabilities=langs(), capability_by_type=ready(*ALL))
    claim = claim_of_register(register)
    assert claim.capability.pools() == {"en-zh"}
    assert claim_of_heartbeat(claim, NodeHeartbeat()) is None
    assert claim_of_heartbeat(claim, NodeHeartbeat(language_capabilities=langs())) is None
    changed = claim_of_heartbeat(claim, NodeHeartbeat(capability_by_type=ready("nmt", "tts", not_ready=("asr",))))
    assert changed is not None and changed.capability.pairs == frozenset()
    assert changed.reported[0] == langs()  # the languages of the registration stand
    back = claim_of_heartbeat(changed, NodeHeartbeat(capability_by_type=ready(*ALL)))
    assert back is not None and back.capability == claim.capability


def test_describe_keys_is_bounded() -> None:
    assert describe_keys([]) == "none"
    assert describe_keys(["b", "a"]) == "a,b"
    assert describe_keys([f"k{i:03d}" for i in range(500)], shown=3) == "k000,k001,k002,+497"
