"""The live dashboard (issue 11, point 3) in real headless Chromium: the daemon in this process with simulated nodes
and streaming clients (trioscheduler.sim); the page must show the right node and session counts, the pools' nodes,
recent jobs, and a job's timeline once a job is clicked. A screenshot is saved under the test's tmp_path."""

from __future__ import annotations

import functools
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.browser import chromium, console_errors, in_thread, require_browser, wait_for
from tests.wire import ROOT, WAIT, start_daemon, until
from trioscheduler.config import Config
from trioscheduler.sim import Pcm16Audio, SimClient, SimNode, SimNodeBehaviour, default_wav_path, read_wav

NODES = ("node-DASH0001", "node-DASH0002")
#: The shipped clip four times over: each client streams for ~19 s, so both sessions stay open while the page is
#: checked, and its pauses give several utterances per session.
REPEATS = 4
RESULT_ROW = "//table[@id='jobs']//tr[contains(@class, 'job-row')][td[contains(@class, 'outcome-result')]]"


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def click_a_delivered_job(driver: Any) -> None:
    """Click a job with a result (the table is redrawn every second: retry on a stale row). The row under the
    pointer may be redrawn between finding it and the click, so which job was opened is read from the page."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked(d: Any) -> bool:
        try:
            d.find_element(By.XPATH, RESULT_ROW).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(driver, clicked)


def node_ids_shown(driver: Any) -> set[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return {row.get_attribute("data-node-id") for row in driver.find_elements(By.CSS_SELECTOR, "#pools .node")}
    except StaleElementReferenceException:
        return set()


def timeline_stages(driver: Any) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        rows = driver.find_elements(By.CSS_SELECTOR, "#timeline-table tr.stage")
        return [row.get_attribute("data-stage") for row in rows]
    except StaleElementReferenceException:
        return []


async def test_dashboard_in_headless_chromium(nursery: trio.Nursery, make_config: Callable[..., Config],
                                              tmp_path: Path) -> None:
    require_browser()
    daemon = await start_daemon(nursery, make_config())
    for node_id in NODES:
        await nursery.start(SimNode(SimNodeBehaviour(delay_s=0.05), node_id=node_id).run, daemon.node_url)
    clip = read_wav(default_wav_path())
    audio = Pcm16Audio(clip.pcm * REPEATS, clip.sample_rate)
    url = f"{daemon.listening.http_url}/dashboard"
    screenshot = tmp_path / "dashboard.png"

    with chromium(tmp_path / "profile", height=1300) as driver:
        await in_thread(driver.get, url)
        await in_thread(wait_for, driver, lambda d: text_of(d, "node-count") == str(len(NODES)))
        async with trio.open_nursery() as clients:
            for src, tgt in (("zh", "en"), ("en", "zh")):
                clients.start_soon(functools.partial(SimClient(src_lang=src, tgt_lang=tgt, cut="vad").run,
                                                     daemon.session_url, audio))
            await until(lambda: daemon.scheduler.sessions.active == 2, WAIT)
            await in_thread(wait_for, driver, lambda d: text_of(d, "session-count") == "2")
            await in_thread(wait_for, driver, lambda d: d.find_elements("xpath", RESULT_ROW))
            async with httpx.AsyncClient(timeout=WAIT) as http:
                api_nodes = (await http.get(f"{daemon.listening.http_url}/api/v1/nodes")).json()
                node_rows = await in_thread(wait_for, driver, lambda d: node_ids_shown(d) == set(NODES))
                await in_thread(click_a_delivered_job, driver)
                await in_thread(wait_for, driver, lambda d: "delivered" in timeline_stages(d))
                stages = await in_thread(timeline_stages, driver)
                shown_job = await in_thread(text_of, driver, "timeline-job")
                api_job = (await http.get(f"{daemon.listening.http_url}/api/v1/jobs/{shown_job}")).json()
            await in_thread(driver.save_screenshot, str(screenshot))
            errors = await in_thread(console_errors, driver)
            clients.cancel_scope.cancel()

    assert api_nodes["count"] == len(NODES) and node_rows
    assert stages == [stage["stage"] for stage in api_job["timeline"]], (stages, api_job)
    for stage in ("finalized", "created", "selected", "dispatched", "result", "outcome", "delivered"):
        assert stage in stages, stages
    assert stages[0] == "finalized" and stages[-1] == "delivered"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []


async def test_demo_keep_serves_the_dashboard_until_ctrl_c() -> None:
    """``python -m trioscheduler demo --keep`` prints the dashboard's URL, keeps serving it (with the demo's jobs)
    after its clients are done, and exits 0 on SIGINT."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioscheduler", "demo", "--keep"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=ROOT)
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(60):
            while b"until Ctrl-C" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output.decode()
                output += chunk
        match = re.search(r"dashboard: (http://\S+)/dashboard", output.decode())
        assert match, output.decode()
        async with httpx.AsyncClient(timeout=WAIT) as http:
            page = await http.get(f"{match.group(1)}/dashboard")
            jobs = (await http.get(f"{match.group(1)}/api/v1/jobs")).json()["jobs"]
            nodes = (await http.get(f"{match.group(1)}/api/v1/nodes")).json()
        assert page.status_code == 200 and "<title>trioscheduler dashboard</title>" in page.text
        assert jobs and all(job["outcome"] == "result" for job in jobs)
        assert nodes["count"] == 3
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            while chunk := await process.stdout.receive_some():
                output += chunk
            assert await process.wait() == 0, output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "0 errors" in output.decode()
