"""The /try page: served by the HTTP listener, and driven in real headless Chromium whose fake microphone plays
espeak-ng speech, against the speech node: the page must show the recognised words."""

from __future__ import annotations

import functools
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.browser import chromium, console_errors, in_thread, wait_for
from tests.test_speech_engines import SPOKEN, SPOKEN_WORDS, require_speech_engines
from tests.wire import Daemon, start_daemon
from trioscheduler.config import Config
from trioscheduler.speech import EspeakSynthesizer, Pcm16, resample, wav_bytes
from trioscheduler.speech.node import run_speech_node
from trioscheduler.web.try_page import try_page_asset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_try_page_and_script_are_served(daemon: Daemon) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{daemon.listening.http_url}/try")
        script = await http.get(f"{daemon.listening.http_url}/try/try.js")
        missing = [(await http.get(f"{daemon.listening.http_url}{path}")).status_code
                   for path in ("/try/../http.py", "/try/try.html", "/tryx", "/try/x.js")]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/try/try.js"' in page.text and 'id="start"' in page.text
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert '"audio_chunk"' in script.text and '"session_init"' in script.text
    assert missing == [404, 404, 404, 404]


async def test_try_page_in_one_port_mode(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    port = _free_port()
    daemon = await start_daemon(nursery, make_config(server={"port": port, "http_port": port}))
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{daemon.listening.http_url}/try")
    assert page.status_code == 200 and 'id="start"' in page.text
    assert f'data-session-port="{port}"' in page.text


def test_a_configured_session_port_is_written_into_the_page() -> None:
    with_port = try_page_asset("/try", 5010)
    without = try_page_asset("/try", 0)
    assert with_port is not None and without is not None
    assert b'<body data-session-port="5010">' in with_port[0]
    assert b"data-session-port" not in without[0]
    assert try_page_asset("/try/nothing") is None


async def _fake_microphone_wav(path: Path) -> Path:
    """espeak-ng speech between silences (the page's pause detection ends the utterance), 48 kHz like a mic."""
    speech = resample(await EspeakSynthesizer().synthesize(SPOKEN, "en"), 48000)
    silence = bytes(2 * 48000)  # one second
    await trio.Path(path).write_bytes(wav_bytes(Pcm16(silence + speech.samples + silence + silence, 48000)))
    return path


def _drive_page(driver: Any, url: str, screenshot: Path) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url)
    Select(driver.find_element(By.ID, "src-lang")).select_by_value("en")
    Select(driver.find_element(By.ID, "tgt-lang")).select_by_value("de")
    driver.find_element(By.ID, "start").click()

    def recognised(d: Any) -> str | None:
        texts = [el.text for el in d.find_elements(By.CSS_SELECTOR, "#results .asr") if el.text.strip()]
        return texts[0] if texts else None

    text: str = wait_for(driver, recognised, seconds=90)
    driver.save_screenshot(str(screenshot))
    driver.find_element(By.CSS_SELECTOR, "#results .play").click()  # decodes the WAV and plays it
    driver.execute_async_script("setTimeout(arguments[0], 500)")
    return text


async def test_the_page_shows_what_the_fake_microphone_said(
        nursery: trio.Nursery, daemon: Daemon, tmp_path: Path) -> None:
    require_speech_engines()
    await nursery.start(functools.partial(run_speech_node, daemon.node_url, capacity=2, drain_signals=()))
    wav = await _fake_microphone_wav(tmp_path / "speech.wav")
    query = urllib.parse.urlencode({"scheduler": daemon.session_url})
    url = f"{daemon.listening.http_url}/try?{query}"
    screenshot = tmp_path / "try-page.png"
    flags = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required")
    with chromium(tmp_path / "profile", *flags) as driver:
        text = await in_thread(_drive_page, driver, url, screenshot)
        translated = await in_thread(
            lambda: driver.find_element("css selector", "#results .translated").text)
        note = await in_thread(lambda: driver.find_element("css selector", "#results .note").text)
        errors = await in_thread(console_errors, driver)
    assert len(set(text.split()) & SPOKEN_WORDS) >= 2, text
    assert translated.strip(), "no translated text shown"
    assert "glossary" in note
    assert screenshot.stat().st_size > 0
    assert errors == [], errors

