"""Real headless Chromium for page tests: Debian's ``chromium`` driven by ``chromedriver`` through selenium.

Selenium calls block, so a trio test calls them through :func:`in_thread` and the daemon under test keeps running
in the test's event loop. Without the browser a test is skipped on a developer's machine and fails under CI
(``CI`` set), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from tests.native import require

T = TypeVar("T")

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_CANDIDATES = ("chromedriver",)


def _first_on_path(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> tuple[str, str]:
    """The paths of chromium and chromedriver; skips (or fails under CI) when either is missing."""
    browser = _first_on_path(CHROMIUM_CANDIDATES)
    driver = _first_on_path(CHROMEDRIVER_CANDIDATES)
    require(None if browser is not None and driver is not None
            else "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    assert browser is not None and driver is not None
    return browser, driver


@contextlib.contextmanager
def chromium(profile_dir: Path, *extra_args: str, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver with its own profile under ``profile_dir``; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", f"--user-data-dir={profile_dir}", *extra_args):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking selenium call in a worker thread, so the daemon in this event loop keeps serving."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def wait_for(driver: Any, condition: Callable[[Any], T], seconds: float = 20.0) -> T:
    """Selenium's explicit wait: poll ``condition(driver)`` until it returns something truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)  # type: ignore[no-any-return]


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at level SEVERE (JavaScript errors among them)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
