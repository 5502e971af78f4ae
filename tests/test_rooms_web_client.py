"""The original's web client in room mode, scripted: exactly the JSON it sends (webapp/web-client of the original:
``room_create`` from its "create room" button, ``room_join`` per its RoomJoinMessage, opus audio_chunks, WebRTC
signalling with browser-shaped SDP and ICE objects), and only the fields it reads back."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from tests.wire import b64, connect, opus_packets, registered_node, result_for, start_daemon
from trioscheduler.config import Config


def web_session_init(trace_id: str) -> dict[str, object]:
    """What the web client's connect() sends (one-way mode)."""
    return {"type": "session_init", "client_version": "web-client-v1.0", "platform": "web", "src_lang": "zh",
            "tgt_lang": "en", "dialect": None, "features": {}, "pairing_code": None, "mode": "one_way",
            "trace_id": trace_id, "tenant_id": None}


async def test_web_client_room_mode(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(segmentation={"pause_ms": 300}))
    async with registered_node(daemon.node_url, languages=("zh", "en")) as (node, _), \
            connect(daemon.session_url) as host, connect(daemon.session_url) as guest:
        await host.send(**web_session_init("trace-host"))
        sid_host = (await host.recv_type("session_init_ack"))["session_id"]
        await guest.send(**web_session_init("trace-guest"))
        sid_guest = (await guest.recv_type("session_init_ack"))["session_id"]

        # The create button: createRoom() with no display name or language (JSON.stringify drops undefined).
        await host.send_raw(f'{{"type":"room_create","client_ts":{int(time.time() * 1000)}}}')
        ack = await host.recv_type("room_create_ack")
        code = ack["room_code"]
        assert code.isdigit() and len(code) == 6  # the client's join form checks /^\d{6}$/
        assert (await host.recv_type("room_members"))["room_code"] == code

        await guest.send(type="room_join", room_code=code, display_name="Guest", preferred_lang="en")
        for peer in (guest, host):
            members = await peer.recv_type("room_members")
            assert members["room_code"] == code
            by_id = {member["session_id"] or member["participant_id"]: member for member in members["members"]}
            assert set(by_id) == {sid_host, sid_guest}
            assert by_id[sid_guest]["display_name"] == "Guest"
            assert all(type(member["raw_voice_preferences"]) is dict for member in members["members"])

        # The host speaks: opus chunks in the client's packet framing, then its empty is_final.
        for seq in range(3):
            await host.send(type="audio_chunk", session_id=sid_host, seq=seq, is_final=False,
                            payload=b64(opus_packets(10)), client_timestamp_ms=int(time.time() * 1000))
        await host.send(type="audio_chunk", session_id=sid_host, seq=3, is_final=True, payload="",
                        client_timestamp_ms=int(time.time() * 1000))
        assign = await node.recv_type("job_assign")
        assert (assign["session_id"], assign["tgt_lang"], assign["audio_format"]) == (sid_host, "en", "opus")
        await node.send(**result_for(assign, text_translated="hello"))
        result = await guest.recv_type("translation_result")
        for field in ("session_id", "utterance_index", "job_id", "text_asr", "text_translated", "tts_audio",
                      "tts_format", "trace_id"):
            assert field in result
        assert result["text_translated"] == "hello" and result["session_id"] == sid_host

        # WebRTC: the guest's offer reaches the host with the sender in ``to`` (how the client reads it).
        offer = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
        await guest.send(type="webrtc_offer", room_code=code, to=sid_host, sdp=offer)
        relayed = await host.recv_type("webrtc_offer")
        assert (relayed["room_code"], relayed["to"], relayed["sdp"]) == (code, sid_guest, offer)
        await host.send(type="webrtc_answer", room_code=code, to=sid_guest, sdp={"type": "answer", "sdp": "v=0"})
        assert (await guest.recv_type("webrtc_answer"))["to"] == sid_host
        candidate = {"candidate": "candidate:0 1 UDP 2122252543 192.0.2.1 50000 typ host", "sdpMid": "0",
                     "sdpMLineIndex": 0, "usernameFragment": "abcd"}
        await host.send(type="webrtc_ice", room_code=code, to=sid_guest, candidate=candidate)
        assert (await guest.recv_type("webrtc_ice"))["candidate"] == candidate

        # setRawVoicePreference(roomCode, targetSessionId, false): the host mutes the guest.
        await host.send(type="room_raw_voice_preference", room_code=code, target_session_id=sid_guest,
                        receive_raw_voice=False)
        members = (await host.recv_type("room_members"))["members"]
        assert members[0]["raw_voice_preferences"] == {sid_guest: False}
        await guest.recv_type("room_members")
        await guest.send(type="webrtc_offer", room_code=code, to=sid_host, sdp=offer)
        await host.nothing_for(0.3)

        # leaveRoom() ends the client's session first: that alone takes it out of the room.
        await guest.send(type="session_close", session_id=sid_guest, reason="user_stopped")
        await guest.recv_type("session_close_ack")
        remaining = (await host.recv_type("room_members"))["members"]
        assert [member["session_id"] for member in remaining] == [sid_host]
