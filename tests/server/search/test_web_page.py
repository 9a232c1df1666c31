"""The web page end to end in headless Chromium, driven over the DevTools protocol.

Types a query, compares a shopper with no personalization, uploads a photo, speaks a query
into a fake microphone fed from a WAV file, and keeps screenshots in tests/artifacts/
(git-ignored). Skips when Chromium is not installed.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install -y chromium); "
    "the web page end-to-end test needs it",
)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, profile: Path, *flags: str) -> None:
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,1100",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", *flags, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = self._devtools_port()
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)
        )
        self._ids = itertools.count(1)

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                return int(found.group(1))
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("Chromium did not start its DevTools endpoint")

    def call(self, method: str, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while time.monotonic() < deadline:
            value = self.js(guarded)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}; status: {self.status()}")

    def status(self) -> str:
        return self.js("document.getElementById('status').textContent")

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


CARDS = """Array.from(document.querySelectorAll('#results-%s .card')).map(c => ({
  id: c.dataset.id, meta: c.querySelector('.meta').textContent }))"""
IMAGES_LOADED = """document.images.length > 0 &&
  Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"""


def test_search_compare_shoppers_and_upload_a_photo(make_app, serve_app, search_items, tmp_path):
    app, _ = make_app(demo=True)
    with serve_app(app) as url:
        browser = DevTools(tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=url + "/")
            browser.wait_for("document.body.dataset.state === 'ready'")
            shoppers = browser.js("shoppers.map(s => s.name)")
            assert len(shoppers) >= 2
            assert "recall@10" in browser.js("document.getElementById('version').textContent")

            browser.js("document.getElementById('q').value = 'black watch'")
            browser.js("document.getElementById('shopper-a').value = ''")
            browser.js("document.getElementById('shopper-b').value = '1'")
            browser.js("document.getElementById('go').click()")
            browser.wait_for("document.body.dataset.state === 'done'")
            plain, personal = browser.js(CARDS % "a"), browser.js(CARDS % "b")
            assert len(plain) == len(personal) == 12
            assert shoppers[1] in browser.js("document.getElementById('title-b').textContent")
            scores = lambda cards: [re.findall(r"-?\d+\.\d+", c["meta"])[:2] for c in cards]  # noqa: E731
            assert all(s == b for s, b in scores(plain))  # not personalized: score == base
            assert any(s != b for s, b in scores(personal))  # the shopper's rerank shows
            browser.wait_for(IMAGES_LOADED)

            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / ".gitignore").write_text("*\n")
            shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            (ARTIFACTS / "search_page.png").write_bytes(base64.b64decode(shot["data"]))

            # a photo upload (multipart) with no text
            root = browser.call("DOM.getDocument")["root"]["nodeId"]
            node = browser.call("DOM.querySelector", nodeId=root, selector="#photo")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=node, files=[search_items[3].photo])
            browser.js("document.getElementById('q').value = ''")
            browser.js("document.getElementById('go').click()")
            browser.wait_for("document.body.dataset.state === 'done'")
            assert len(browser.js(CARDS % "a")) == 12, browser.status()

            # a bad request shows the service's error naming the field
            browser.js("document.getElementById('price-min').value = '90'")
            browser.js("document.getElementById('price-max').value = '10'")
            browser.js("document.getElementById('go').click()")
            browser.wait_for("document.body.dataset.state === 'error'")
            assert "filters.price_min" in browser.status()
        finally:
            browser.close()
    assert (ARTIFACTS / "search_page.png").stat().st_size > 10_000


def test_a_query_spoken_into_the_microphone(make_app, serve_app, search_items, speak, tmp_path):
    """Chromium's fake microphone plays a WAV file (espeak-ng speech after half a second of
    silence, once) from the moment the page opens it; the page records it with
    MediaRecorder, sends it as WAV and shows what was heard above the results."""
    said = "black watches for men"
    speech = speak(said)
    header, pcm = speech[:44], speech[44:]
    rate = int.from_bytes(header[24:28], "little")
    silence = bytes(rate)  # 0.5 s of 16-bit samples
    size = len(silence) + len(pcm) + len(silence)
    fake_mic = tmp_path / "microphone.wav"
    fake_mic.write_bytes(
        header[:4] + (36 + size).to_bytes(4, "little") + header[8:40]
        + size.to_bytes(4, "little") + silence + pcm + silence
    )  # fmt: skip
    seconds = size / (2 * rate)
    app, _ = make_app()
    categories = {it.id: it.category for it in search_items}
    with serve_app(app) as url:
        browser = DevTools(
            tmp_path / "profile",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
        )
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=url + "/")
            browser.wait_for("document.body.dataset.state === 'ready'")
            assert browser.js("document.getElementById('mic').hidden") is False
            browser.js("document.getElementById('mic').click()")
            browser.wait_for("document.body.dataset.state === 'recording'")
            time.sleep(seconds + 0.5)
            browser.js("document.getElementById('mic').click()")  # stop: the page searches
            browser.wait_for("document.body.dataset.state === 'done'")
            heard = browser.js("document.getElementById('transcript').textContent")
            assert heard.startswith(f"Heard: “{said}”"), heard
            cards = browser.js(CARDS % "a")
            assert len(cards) == 12 and len(browser.js(CARDS % "b")) == 12
            assert [categories[c["id"]] for c in cards[:3]] == ["Watches"] * 3
            shot = browser.call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / ".gitignore").write_text("*\n")
            (ARTIFACTS / "spoken_query.png").write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()


def test_a_demo_shopper_s_taste_shows_at_a_glance(
    fashion_dir, serve_app, untrained_encoder, tmp_path
):
    """The whole catalog, text-only item vectors (the untrained vision tower would add noise):
    for "casual shoes", the built-in shopper who likes black items for men fills the
    personalized column with them, while the unpersonalized column is the plain search."""
    from server.search.catalog_build import create_catalog, fashion_items
    from server.search.service import create_app
    from tests.server.search.conftest import ADMIN_TOKEN, search_config

    config = search_config(tmp_path / "work", demo=True, admin_token=ADMIN_TOKEN)
    items = fashion_items(config_with_data(config, fashion_dir))
    vectors = untrained_encoder.encode_text([it.title for it in items])
    catalog = create_catalog(config, items, vectors, untrained_encoder.version)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    with serve_app(app) as url:
        plain_api = httpx.post(url + "/search", json={"text": "casual shoes", "k": 12}).json()
        browser = DevTools(tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=url + "/")
            browser.wait_for("document.body.dataset.state === 'ready'")
            index = browser.js("shoppers.findIndex(s => s.name === 'demo: Men / Black')")
            assert index >= 0
            browser.js("document.getElementById('q').value = 'casual shoes'")
            browser.js("document.getElementById('shopper-a').value = ''")
            browser.js(f"document.getElementById('shopper-b').value = '{index}'")
            browser.js("document.getElementById('go').click()")
            browser.wait_for("document.body.dataset.state === 'done'")
            titles = (
                "Array.from(document.querySelectorAll('#results-%s .card .title'))"
                ".map(t => t.textContent)"
            )
            plain, personal = browser.js(titles % "a"), browser.js(titles % "b")
        finally:
            browser.close()
    assert plain == [r["title"] for r in plain_api["results"]]
    black_for_men = [t for t in personal if " Men " in f" {t} " and "Black" in t]
    assert len(personal) == 12 and len(black_for_men) >= 11, personal


def config_with_data(config, fashion_dir):
    from common.config import config_from_dict

    return config_from_dict({"paths": {"data_dir": str(fashion_dir.parent)}}, config)
