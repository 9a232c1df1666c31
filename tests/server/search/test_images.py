"""Photos: the pixel limit is read from the header before decoding; decoding never stalls
the event loop (``/healthz`` answers while a huge photo decodes)."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from server.search.bench_limits import gray_png
from tests.server.search.conftest import ADMIN_HEADERS, running_server


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"13k": gray_png(13_000, 13_000), "20k": gray_png(20_000, 20_000)}


@pytest.mark.parametrize("size", ["13k", "20k"])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(make_app, bombs, size):
    app, config = make_app()
    assert len(bombs[size]) < config.search.max_image_bytes  # small file, huge image
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        upload = c.post("/search", files={"image": ("b.png", bombs[size], "image/png")})
        as_json = c.post("/search", json={"image": base64.b64encode(bombs[size]).decode()})
        item = {"id": "bomb", "image": base64.b64encode(bombs[size]).decode()}
        upsert = c.post("/items", json={"items": [item]})
    for r, field in ((upload, "image"), (as_json, "image"), (upsert, "items[0].image")):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["field"] == field and "pixels" in r.json()["error"]["message"]


def test_healthz_answers_while_a_huge_photo_decodes(make_app, bombs):
    app, config = make_app(max_image_pixels=100_000_000)  # let a 9,000 x 9,000 photo decode
    latencies: list[float] = []
    done = threading.Event()
    with running_server(app, config.search) as url:

        def upload() -> None:
            files = {"image": ("b.png", gray_png(9_000, 9_000), "image/png")}
            try:
                httpx.post(f"{url}/search", files=files, timeout=120).raise_for_status()
            finally:
                done.set()

        with httpx.Client(base_url=url, timeout=10) as client:
            client.get("/healthz")
            worker = threading.Thread(target=upload)
            start = time.monotonic()
            worker.start()
            while not done.is_set():
                began = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - began)
                time.sleep(0.02)
            worker.join()
            busy = time.monotonic() - start
    assert busy > 0.5 and len(latencies) > 5  # the decode took a while and was watched
    # On the event loop the decode would stall every request for its whole duration.
    assert max(latencies) < min(0.5, busy / 2), (max(latencies), busy)
