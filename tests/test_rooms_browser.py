"""Room mode from a real browser (issue 14, "Done when"): headless Chromium runs tests/pages/rooms_client.html, a
client written to the original's web-client protocol, with three members on one page, each with its own
``/ws/session`` socket. The first creates a room, the others join it with their listening language, the first
speaks (pcm16 audio_chunks generated in JavaScript, then the empty is_final chunk), and each listener must show
the simulated node's translation into its own language, unchanged, while the speaker shows none. The daemon and
a simulated node run in this process; a screenshot is saved under the test's tmp_path."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio

from tests.browser import chromium, console_errors, in_thread, require_browser, wait_for
from tests.wire import start_daemon
from trioscheduler.config import Config
from trioscheduler.sim import SimNode, SimNodeBehaviour
from trioscheduler.sim.node import expected_texts

PAGE = Path(__file__).parent / "pages" / "rooms_client.html"
NODE_ID = "node-ROOM0001"
SPEAKER, LISTENERS = "member-1", {"member-2": "en", "member-3": "ja"}
SRC_LANG = "zh"
#: The page's defaults: eight 100 ms chunks of its test tone at 16 kHz.
CHUNKS, SAMPLES_PER_CHUNK = 8, 1600


def tone_sample(i: int) -> int:
    """The page's ``toneSample``: a triangle of period 32 samples, peak 8000, starting at 0."""
    p = i % 32
    if p < 8:
        return p * 1000
    if p < 24:
        return (16 - p) * 1000
    return (p - 32) * 1000


def utterance_audio() -> bytes:
    """The bytes of one utterance as the page streams them: pcm16 little-endian, chunk after chunk."""
    count = CHUNKS * SAMPLES_PER_CHUNK
    return b"".join(tone_sample(i).to_bytes(2, "little", signed=True) for i in range(count))


#: What one member's panel shows, read in one script so a list the page redraws meanwhile cannot go stale.
PANEL_SNAPSHOT = """
const panel = document.getElementById(arguments[0]);
const text = (name) => panel.querySelector("." + name).textContent;
const all = (name) => Array.from(panel.querySelectorAll("." + name));
return {
  status: text("status"), session_id: text("session-id"), room_code: text("room-code"),
  chunks_sent: text("chunks-sent"), heartbeats: text("heartbeats"),
  members: all("room-member").map((item) => [item.dataset.sessionId, item.dataset.preferredLang]),
  results: all("result").map((item) => ({
    session_id: item.dataset.sessionId, utterance_index: item.dataset.utteranceIndex,
    tts_bytes: item.dataset.ttsBytes, text_translated: item.querySelector(".text-translated").textContent})),
  errors: all("error").map((item) => item.textContent),
};
"""


def shown(driver: Any, panel: str) -> dict[str, Any]:
    """The panel's status, session id, room code, counters, members, results and errors, as shown."""
    return driver.execute_script(PANEL_SNAPSHOT, panel)  # type: ignore[no-any-return]


def showing(panel: str, check: Callable[[dict[str, Any]], object]) -> Callable[[Any], object]:
    """A wait condition: ``check`` holds for what the panel shows."""
    return lambda driver: check(shown(driver, panel))


def type_into(driver: Any, panel: str, name: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{panel} .{name}")
    field.clear()
    field.send_keys(text)


def click(driver: Any, panel: str, button: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{panel} button.{button}").click()


def connect(driver: Any, panel: str, name: str, preferred_lang: str) -> str:
    """Fill in the member's form, connect, and return the session id the page shows."""
    type_into(driver, panel, "display-name", name)
    type_into(driver, panel, "preferred-lang", preferred_lang)
    click(driver, panel, "connect")
    wait_for(driver, showing(panel, lambda seen: seen["status"] == "connected"))
    return str(shown(driver, panel)["session_id"])


def run_room(driver: Any, screenshot: Path) -> dict[str, Any]:
    """The whole scenario in the browser (selenium blocks: this runs in a worker thread). Returns what the panels
    showed once all had joined and once the listeners had their results, for the test to check."""
    sessions = {SPEAKER: connect(driver, SPEAKER, "Ann", SRC_LANG)}
    click(driver, SPEAKER, "create")
    wait_for(driver, showing(SPEAKER, lambda seen: re.fullmatch(r"\d{6}", seen["room_code"])))
    code = shown(driver, SPEAKER)["room_code"]
    for panel, lang in LISTENERS.items():
        sessions[panel] = connect(driver, panel, f"Listener {lang}", lang)
        type_into(driver, panel, "room-code-input", code)
        click(driver, panel, "join")
    panels = [SPEAKER, *LISTENERS]
    for panel in panels:
        wait_for(driver, showing(panel, lambda seen: len(seen["members"]) == len(panels)))
    joined = {panel: shown(driver, panel) for panel in panels}

    click(driver, SPEAKER, "speak")
    for panel in LISTENERS:
        wait_for(driver, showing(panel, lambda seen: seen["results"]))
    # A heartbeat's answer comes after anything the scheduler had already queued for the speaker: once it is
    # shown, a result the speaker was (wrongly) sent would be shown too.
    click(driver, SPEAKER, "heartbeat")
    wait_for(driver, showing(SPEAKER, lambda seen: seen["heartbeats"] == "1"))
    heard = {panel: shown(driver, panel) for panel in panels}
    driver.save_screenshot(str(screenshot))
    return {"code": code, "sessions": sessions, "joined": joined, "heard": heard,
            "console_errors": console_errors(driver)}


async def test_browser_members_hear_the_speaker_in_their_own_languages(
        nursery: trio.Nursery, make_config: Callable[..., Config], tmp_path: Path) -> None:
    require_browser()
    daemon = await start_daemon(nursery, make_config())
    node = SimNode(SimNodeBehaviour(languages=(SRC_LANG, *LISTENERS.values()), delay_s=0.05), node_id=NODE_ID)
    await nursery.start(node.run, daemon.node_url)
    url = f"{PAGE.as_uri()}?{urlencode({'ws': daemon.session_url})}"
    screenshot = tmp_path / "rooms.png"

    with chromium(tmp_path / "profile", width=1400, height=1000) as driver:
        await in_thread(driver.get, url)
        page = await in_thread(run_room, driver, screenshot)

    sessions, code, joined, heard = page["sessions"], page["code"], page["joined"], page["heard"]
    speaker = sessions[SPEAKER]
    assert re.fullmatch(r"\d{6}", code)
    expected_members = [[speaker, SRC_LANG], *([sessions[panel], lang] for panel, lang in LISTENERS.items())]
    for panel in sessions:
        assert joined[panel]["room_code"] == code and joined[panel]["status"] == "in room", joined[panel]
        assert joined[panel]["members"] == expected_members, joined[panel]

    # What the browser streamed reached the node byte for byte, as one utterance cut by its is_final, once per
    # listening language. The web client declares no audio_format, so its pcm16 arrives in an "opus" session:
    # every chunk opens with a zero sample, read as a zero-length packet, so it is counted unframed and adds no
    # audio time, and it is forwarded as received.
    audio = utterance_audio()
    assignments = [message for message in node.received if message.get("type") == "job_assign"]
    assert sorted(assign["tgt_lang"] for assign in assignments) == sorted(LISTENERS.values())
    for assign in assignments:
        assert base64.b64decode(assign["audio"]) == audio
        assert (assign["session_id"], assign["src_lang"], assign["utterance_index"]) == (speaker, SRC_LANG, 0)
        assert assign["audio_format"] == "opus" and assign["is_manual_cut"] is True
    stats = await daemon.scheduler.stats()
    assert stats is not None
    counters = stats["sessions"]["counters"]
    assert (counters["opus_payloads_unframed"], counters["opus_payloads_empty_packets"]) == (CHUNKS, CHUNKS)

    # Each listener heard the node's translation into its own language, unchanged; the speaker heard none.
    assert (heard[SPEAKER]["chunks_sent"], heard[SPEAKER]["status"]) == (str(CHUNKS), "spoke")
    assert heard[SPEAKER]["results"] == []
    for panel, lang in LISTENERS.items():
        (result,) = heard[panel]["results"]
        _, translated = expected_texts(SRC_LANG, lang, 0, audio, "opus")
        assert translated.startswith(f"[{lang}] ")
        assert result["text_translated"] == translated
        assert (result["session_id"], result["utterance_index"]) == (speaker, "0")
        assert int(result["tts_bytes"]) > 0
    assert {panel: heard[panel]["errors"] for panel in sessions} == {panel: [] for panel in sessions}
    assert page["console_errors"] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
