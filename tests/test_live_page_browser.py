"""
The live calls page (``GET /`` in a browser) in a real headless Chromium driven by selenium, against avr as built by
`avr.service.build` on loopback, with a simulated Asterisk and a fake STS: the API key entered once, then one real
AudioSocket call shown live (state, parties, DTMF, transcript lines, a running duration) until it ends.

Selenium blocks, so each of its calls runs in the reactor's thread pool (``deferToThread``) while the reactor serves
the page, ``/calls`` and ``/events``. Skipped where Debian's ``chromium`` and ``chromium-driver`` are not installed.
Set ``AVR_LIVE_PAGE_SCREENSHOT=/path/page.png`` to keep a screenshot of the page with the call live.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from avr.testing.asterisk import Continuous
from tests.helpers import tone
from tests.test_integration_core import Rig

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
if MISSING:
    pytest.skip(f"no headless browser: {' and '.join(MISSING)} not found (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

KEY = "browser-test-key-7f3a91"
U1 = "4b0d3c2e-8f61-4a7d-9c55-0e2f6a1b7d90"
#: Seconds any one thing may take to show up in the page.
WAIT = 5


def chromium(profile: Path) -> Any:
    """A headless Chromium (as root in CI: no sandbox) with its own profile, driven through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,760", "--no-first-run", "--disable-extensions", "--disable-sync",
                     f"--user-data-dir={profile}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


#: The rendered text (``innerText``: as styled, e.g. upper-cased) of every element matching a selector, read in one
#: script: the page re-renders a call's card on every event, so elements found earlier may be gone.
TEXTS = "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.innerText);"
#: Whether the element of an id is displayed (laid out: not ``hidden``, not ``display: none``).
SHOWN = "const e = document.getElementById(arguments[0]); return !!e && e.getClientRects().length > 0;"


class Page:
    """The browser, every call of it in a thread (a Deferred each)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def run(self, f: Callable[..., Any], *args: Any) -> Any:
        return deferToThread(f, *args)

    def texts(self, selector: str) -> Any:
        """The texts of the elements matching ``selector``, now."""
        return self.run(self.driver.execute_script, TEXTS, selector)

    async def read(self, selector: str) -> str:
        """The text of the first element matching ``selector`` (``""`` if none), now."""
        found = await self.texts(selector)
        return found[0] if found else ""

    def type_into(self, id_: str, keys: str) -> Any:
        """Type ``keys`` into the element ``id_``, as a user does."""
        return self.run(lambda: self.driver.find_element(By.ID, id_).send_keys(keys))

    def wait(self, condition: Callable[[Any], Any], what: str) -> Any:
        """Wait (polling, in a thread) until ``condition(driver)`` is true; its value."""
        return self.run(lambda: WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
            condition, f"the page never showed {what}"))

    def lists(self, selector: str, expected: list[str]) -> Any:
        """Wait until the texts of the elements matching ``selector`` are ``expected``."""
        return self.wait(lambda d: d.execute_script(TEXTS, selector) == expected, f"{expected!r} in {selector}")

    def shows(self, selector: str, expected: str) -> Any:
        """Wait until the first element matching ``selector`` reads ``expected``."""
        return self.wait(lambda d: d.execute_script(TEXTS, selector)[:1] == [expected], f"{expected!r} in {selector}")

    def displayed(self, id_: str, shown: bool = True) -> Any:
        """Wait until the element ``id_`` is displayed (or, with ``shown=False``, not)."""
        return self.wait(lambda d: d.execute_script(SHOWN, id_) is shown, f"#{id_} {'' if shown else 'not '}shown")


@pytest_twisted.async_yield_fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    driver = await deferToThread(chromium, tmp_path / "profile")
    try:
        yield Page(driver)
    finally:
        await deferToThread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_the_page_shows_a_live_call_from_start_to_end(core_rig: Rig, page: Page) -> None:
    """
    The page asks for the API key once; a dialplan call (POST /call, then AudioSocket) appears with its state,
    channel, agent, a running talk time, the caller's digits and both sides' transcript lines, and is shown ended
    with avr's reason when the caller hangs up.
    """
    core_rig.start(api_key=KEY)
    base = f"http://127.0.0.1:{core_rig.port_of('http')}"
    await page.run(page.driver.get, base + "/")

    # The key, once: the overlay goes, the events stream is live, the empty page says so.
    await page.displayed("api-key")
    await page.shows("#conn-status", "API key needed")
    await page.type_into("api-key", KEY + "\n")
    await page.shows("#conn-status", "live")
    await page.displayed("key-overlay", shown=False)
    await page.displayed("empty")
    await page.wait(lambda d: d.execute_script(TEXTS, "#server")[0].startswith("avr "), "the server line")

    response = await core_rig.http.post(base + "/call", headers={"X-API-Key": KEY}, json={"uuid": U1, "payload": {
        "from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}})
    assert response.code == 200
    await response.content()
    asterisk = await core_rig.dial(Continuous.from_pcm(tone(8000, 200), duration=None), uuid=U1)
    sts = await core_rig.session(U1)

    card = f'article.call[data-call-id="{U1}"]'
    await page.shows(card + " .state", "TALKING")  # "talking", upper-cased by the style
    assert await page.read(card + " .kind") == "AudioSocket"
    assert await page.read(card + " .from") == "2000"
    assert await page.read(card + " .to") == "5001"
    meta = await page.read(card + " .meta")
    assert "id" + U1[:8] in meta.replace(" ", "") and "channelPJSIP/2000-00000013" in meta.replace(" ", "")
    assert await page.read(card + " .dtmf") == "none yet"
    assert await page.read("#count-active") == "1"
    assert await page.read("#count-talking") == "1"

    asterisk.send_dtmf("4")
    asterisk.send_dtmf("2")
    await page.lists(card + " .dtmf .key", ["4", "2"])
    sts.send_transcript("agent", "Hello, you are through to the avr demo line.")
    sts.send_transcript("user", "I would like to check my order.")
    await page.lists(card + " .transcript .line .role", ["AGENT", "CALLER"])
    assert await page.texts(card + " .transcript .line .text") == [
        "Hello, you are through to the avr demo line.", "I would like to check my order."]
    # The talk time runs (on the page's own timer, from the call's answeredAt).
    await page.shows(card + " .since", "talk time")
    await page.wait(lambda d: re.fullmatch(r"00:0[1-9]", d.execute_script(TEXTS, card + " .clock")[0]),
                    "a talk time of a second or more")
    event_types = await page.texts("#log .type")
    assert event_types[:4] == ["call.transcript", "call.transcript", "call.dtmf", "call.dtmf"]
    assert "call.created" in event_types
    shot = os.environ.get("AVR_LIVE_PAGE_SCREENSHOT")
    if shot:
        await page.run(page.driver.save_screenshot, shot)

    asterisk.hang_up()
    await page.shows(card + " .state", "ENDED")
    assert await page.read(card + " .end-note") == "ended: Asterisk: connection lost: Connection was closed cleanly."
    assert await page.read(card + " .since") == "call time"
    assert await page.read("#count-active") == "0"
    assert (await page.read("#log .type")) == "call.ended"
