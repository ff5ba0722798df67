"""GET /, the page to look at an answer, in a real browser: Debian's Chromium driven by
selenium against the local endpoint on loopback (the handler that runs on Lambda).

The screenshots go to $TEST_ARTIFACTS (default build/test-artifacts), which CI uploads.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("PAGE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PAGE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))
WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    # A missing browser fails here: .ci/run installs Debian's chromium and chromium-driver.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        assert Path(program).exists(), (
            f"{program} is missing: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver, script: str):
    """The first truthy value of a JavaScript expression, polled until WAIT_S."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(f"return {script}"))


def visible_text(driver, element_id: str) -> str:
    return driver.execute_script(
        f"const e = document.getElementById('{element_id}');"
        "return e && e.offsetParent !== null ? e.textContent : '';"
    )


def lit_pixels(driver, canvas_id: str) -> int:
    """Pixels of a canvas that are not transparent black."""
    return driver.execute_script(
        f"const c = document.getElementById('{canvas_id}');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) {"
        "  if (d[i] + d[i + 1] + d[i + 2] > 0 && d[i + 3] > 0) n++; }"
        "return n;"
    )


def upload(driver, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(path))


def test_the_page_is_small_self_contained_and_sent_with_its_security_headers(local_url):
    with urllib.request.urlopen(local_url + "/") as response:
        html = response.read()
        headers = response.headers
    assert response.status == 200 and headers["Content-Type"].startswith("text/html")
    assert len(html) <= 100_000
    text = html.decode()
    assert "http://" not in text and "https://" not in text  # no CDN, fonts or other hosts
    # The key lives in sessionStorage only; an answer's text is never parsed as HTML.
    for banned in ("localStorage", "document.cookie", "innerHTML", "outerHTML", "eval("):
        assert banned not in text, banned
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    request = urllib.request.Request(local_url + "/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"


def test_an_x_ray_dropped_on_the_page_shows_the_decision_and_the_heatmap(
    browser, local_url, sample_data
):
    xray = sorted((sample_data / "train" / "PNEUMONIA").iterdir())[0]
    upload(browser, local_url + "/", xray)
    decision = wait_for(browser, "document.getElementById('decision').textContent")
    assert decision in {"NORMAL", "PNEUMONIA", "INDETERMINATE"}
    answer = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                local_url + "/predict",
                data=xray.read_bytes(),
                headers={"Content-Type": "image/jpeg"},
            )
        ).read()
    )
    assert decision == answer["decision"]
    assert visible_text(browser, "version") == answer["modelVersion"]
    assert float(visible_text(browser, "probability")) == pytest.approx(
        answer["probability_pneumonia"], abs=1e-3
    )
    assert lit_pixels(browser, "image") > 1000  # the X-ray drawn
    assert lit_pixels(browser, "overlay") > 100  # the heatmap over it
    assert visible_text(browser, "refusal-words") == ""
    # The slider sets the overlay's opacity.
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 80;"
        "s.dispatchEvent(new Event('input'));"
    )
    assert (
        browser.execute_script("return document.getElementById('overlay').style.opacity") == "0.8"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "page-answer.png"))


def test_a_colour_photograph_shows_its_refusal_in_plain_words(browser, local_url, tmp_path):
    from skimage import data

    photo = tmp_path / "astronaut.jpeg"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    upload(browser, local_url + "/", photo)
    words = wait_for(browser, "document.getElementById('refusal-words').textContent")
    assert words.startswith("This does not look like a frontal chest X-ray")
    assert visible_text(browser, "refusal-code") == "not_a_chest_xray"
    assert "colour" in visible_text(browser, "refusal-detail")
    assert visible_text(browser, "decision") == ""  # no answer shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "page-refusal.png"))


class KeyedProxy(http.server.BaseHTTPRequestHandler):
    """API Gateway's API-key check in front of the local endpoint: GET / passes, /predict
    needs x-api-key, and a missing or wrong key gets API Gateway's 403 body."""

    upstream = ""
    key = "test-key-123"
    seen_keys: ClassVar[list[str]] = []
    forged: bytes | None = None  # a 200 answer to send instead of the endpoint's

    def do_GET(self) -> None:
        self.forward()

    def do_POST(self) -> None:
        self.seen_keys.append(self.headers.get("x-api-key", ""))
        if self.headers.get("x-api-key") != self.key:
            self.reply(403, {"Content-Type": "application/json"}, b'{"message":"Forbidden"}')
            return
        if self.forged is not None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(200, {"Content-Type": "application/json"}, self.forged)
            return
        self.forward()

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = urllib.request.Request(
            self.upstream + self.path,
            data=self.rfile.read(length) if length else None,
            headers={"Content-Type": self.headers.get("Content-Type", "")},
            method=self.command,
        )
        try:
            with urllib.request.urlopen(request) as response:
                self.reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            self.reply(error.code, dict(error.headers), error.read())

    def reply(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in {
                "content-length",
                "connection",
                "transfer-encoding",
                "date",
                "server",
            }:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy(local_url):
    """(the proxy's class, its URL): a fresh handler class per test, for its state."""
    handler = type("Proxy", (KeyedProxy,), {"upstream": local_url, "seen_keys": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def enter_key(browser) -> None:
    from selenium.webdriver.common.by import By

    wait_for(browser, "!document.getElementById('key-form').hidden")
    browser.find_element(By.ID, "key").send_keys(KeyedProxy.key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()


def test_the_page_asks_for_the_api_key_once_and_keeps_it_in_the_tab_only(
    browser, proxy, sample_data
):
    handler, url = proxy
    xray = sorted((sample_data / "train" / "NORMAL").iterdir())[0]
    try:
        upload(browser, url, xray)
        enter_key(browser)
        wait_for(browser, "document.getElementById('decision').textContent")
        assert (
            browser.execute_script("return sessionStorage.getItem('pneumonia-api-key')")
            == KeyedProxy.key
        )
        assert browser.execute_script("return localStorage.length") == 0
        assert browser.execute_script("return document.cookie") == ""
        # A second image in the same tab: the key is sent without asking again.
        upload(browser, url, sorted((sample_data / "train" / "PNEUMONIA").iterdir())[0])
        wait_for(browser, "document.getElementById('decision').textContent")
        assert handler.seen_keys == ["", KeyedProxy.key, KeyedProxy.key]
        assert browser.execute_script("return document.getElementById('key-form').hidden")
    finally:
        browser.execute_script("sessionStorage.clear()")


def test_an_answer_is_set_as_text_never_as_markup(browser, proxy, tmp_path):
    handler, url = proxy
    markup = '<img id="injected" src="data:," onerror="document.title=\'pwned\'">'
    handler.forged = json.dumps(
        {
            "predicted_label": markup,
            "decision": markup,
            "probability_pneumonia": 0.5,
            "modelVersion": markup,
            "threshold": 0.5,
        }
    ).encode()
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((64, 64), 128, np.uint8))
    try:
        upload(browser, url, image)
        enter_key(browser)
        wait_for(browser, "document.getElementById('version').textContent")
        assert visible_text(browser, "version") == markup  # the characters, shown as such
        assert visible_text(browser, "decision") == markup
        assert browser.execute_script("return document.getElementById('injected')") is None
        assert browser.title != "pwned"
    finally:
        browser.execute_script("sessionStorage.clear()")
