"""The chat page at `/` in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium):
load it, send a message, watch the reply stream in, press Stop (issue 12).

Skips, with the reason, only where the browser or its driver is not installed
(`scripts/install.sh` installs them when it can). Screenshots go to the test's temp
folder, or to $EDGESLIM_SCREENSHOT_DIR (docs/screenshots for the ones in the repository).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from serve_util import start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1000,900"]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(demo_gguf, tmp_path_factory):
    srv = start_server(demo_gguf, tmp_path_factory.mktemp("page") / "serve.log", "--backend", "numpy")
    yield srv
    srv.stop()


def _wait(cond, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _set(driver, element_id: str, value) -> None:
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input'));", element_id, str(value))


def _send(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def _replies(driver):
    return driver.find_elements("css selector", ".msg.assistant")


def test_chat_page_streams_and_stops(browser, page_server, tmp_path):
    shots = Path(os.environ.get("EDGESLIM_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    d = browser
    d.get(page_server.base + "/")
    assert d.title == "edgeslim chat"
    _wait(lambda: d.find_element("id", "model-name").text == "demo-q8_0", what="the model name")
    _set(d, "system", "You tell short stories for children.")
    _set(d, "temperature", "0.6")
    assert d.find_element("id", "temperature-value").text == "0.6"
    _set(d, "max-tokens", "120")  # long enough to be seen growing (60 tokens could arrive in one look)

    # 1. a whole reply, streamed: the text grows over several looks before it is done
    _send(d, "Tell me a story about a cat.")
    _wait(lambda: _replies(d) and _replies(d)[-1].text, what="streamed text")
    lengths = []
    while d.find_element("id", "stop").is_enabled():
        lengths.append(len(_replies(d)[-1].text))
        time.sleep(0.01)
    first = _replies(d)[-1].text
    assert len({n for n in lengths if n}) >= 2, lengths  # seen growing while it streamed
    assert len(first.split()) >= 10 and "Error" not in first
    assert "cat" in d.find_element("css selector", ".msg.user").text

    # 2. Stop: a long reply, stopped as soon as text appears (tried again if it ended first)
    _set(d, "max-tokens", "300")  # with the first reply it fits the 512-token context
    before = page_server.get("/health")["cancelled"]
    for attempt in range(5):
        _send(d, "Tell me a long story about a dog and a ball.")
        _wait(lambda: len(_replies(d)) == 2 + attempt and _replies(d)[-1].text, what="the second reply")
        if d.find_element("id", "stop").is_enabled():
            d.find_element("id", "stop").click()
            break
    reply = _replies(d)[-1]
    _wait(lambda: "stopped" in reply.get_attribute("class"), what="the reply marked stopped")
    assert d.find_element("id", "send").is_enabled() and not d.find_element("id", "stop").is_enabled()
    stopped_text = reply.text
    time.sleep(0.5)
    assert reply.text == stopped_text  # nothing more arrives
    after = page_server.wait_idle()
    assert after["cancelled"] == before + 1  # the server stopped generating when the page hung up
    d.save_screenshot(str(shots / "chat-page.png"))
    assert (shots / "chat-page.png").stat().st_size > 10_000
