"""Bodies bounded while they arrive: 500 MB chunked bodies, nesting, malformed multipart,
slow bodies. Run against the real HTTP server (uvicorn) in this process."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from server.search.limits import json_depth_exceeds
from tests.server.search.conftest import ADMIN_HEADERS, running_server, stream_chunked

MB = 1 << 20
AUTH = "Authorization: Bearer test-admin-token\r\n"


class PeakMemory:
    """The peak resident memory of this process while the block runs, sampled every 10 ms."""

    def __enter__(self) -> PeakMemory:
        self._process = psutil.Process(os.getpid())
        self.before = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MB


def zeros(total: int, size: int = MB):
    for _ in range(total // size):
        yield b"0" * size


@pytest.fixture(scope="module")
def served(request, tmp_path_factory, search_items, search_vectors, untrained_encoder):
    """One service for the module (16 MB body limit, 1 s body deadline)."""
    from server.search.catalog_build import create_catalog
    from server.search.service import create_app
    from tests.server.search.conftest import ADMIN_TOKEN, search_config

    config = search_config(
        tmp_path_factory.mktemp("limits"), admin_token=ADMIN_TOKEN, body_timeout_s=1.0
    )
    catalog = create_catalog(config, search_items, search_vectors, untrained_encoder.version)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    with running_server(app, config.search) as url:
        yield url, config


def test_a_500_mb_chunked_json_body_is_refused_while_it_arrives(served):
    url, config = served
    body = b'{"text": "' + b"0" * (500 * MB) + b'"}'
    chunks = (body[i : i + MB] for i in range(0, len(body), MB))
    with PeakMemory() as memory:
        status, sent, response = stream_chunked(url, "/search", "application/json", chunks)
    assert status == 413 and b'"field":"body"' in response.replace(b" ", b"")
    assert sent < 64 * MB  # stopped long before the 500 MB
    assert memory.growth_mb < 100, memory.growth_mb
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_500_mb_chunked_multipart_file_is_refused_while_it_arrives(served, tmp_path):
    url, _ = served
    head = (
        b'--BB\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    chunks = iter([head, *zeros(500 * MB)])
    with PeakMemory() as memory:
        status, sent, _ = stream_chunked(url, "/search", "multipart/form-data; boundary=BB", chunks)
    assert status == 413 and sent < 64 * MB
    assert memory.growth_mb < 100, memory.growth_mb


def test_items_and_small_endpoints_are_bounded_too(served):
    url, config = served
    chunks = zeros(100 * MB)
    status, sent, _ = stream_chunked(url, "/items", "application/json", chunks, AUTH)
    assert status == 413 and sent < 64 * MB
    chunks = zeros(64 * MB, 4096)
    status, sent, _ = stream_chunked(url, "/admin/rollback", "application/json", chunks, AUTH)
    assert status == 413 and sent < 8 * MB  # 64 KiB for the other endpoints (+ buffers)


def test_a_declared_length_over_the_limit_is_refused_before_the_body(served):
    import socket

    url, config = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        length = config.search.max_request_bytes + 1
        sock.sendall(
            f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")  # no byte of the body sent


def test_a_body_that_arrives_too_slowly_gets_408(served):
    def trickle():
        yield b'{"text": '
        time.sleep(1.5)  # past the 1 s body deadline
        yield b'"watch"}'

    url, _ = served
    status, _, response = stream_chunked(url, "/search", "application/json", trickle())
    assert status == 408 and b"in time" in response


@pytest.fixture
def client(make_app):
    app, _ = make_app()
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        yield c


@pytest.mark.parametrize("path", ["/search", "/items", "/admin/rollback"])
def test_json_nested_1000_deep_is_a_json_400(client, path):
    for deep in ("[" * 1000 + "]" * 1000, '{"text": ' + "[" * 1000 + "]" * 1000 + "}"):
        r = client.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {"field": "body", "message": "JSON nested over 32 levels"}


def test_a_malformed_multipart_body_is_a_json_400(client):
    r = client.post(
        "/search",
        content=b"--BB\r\n[]--BB--\r\n",
        headers={"content-type": "multipart/form-data; boundary=BB"},
    )
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    assert "malformed multipart" in r.json()["error"]["message"]


def test_multipart_numbers_are_parsed_strictly(client):
    def form(k: str) -> dict:
        return {"text": (None, "watch"), "k": (None, k)}  # multipart text fields

    ok = client.post("/search", files=form("3"))
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3
    for k in ("true", "3.0", "three"):
        r = client.post("/search", files=form(k))
        assert r.status_code == 422 and r.json()["error"]["field"] == "k", k


def test_json_depth_counts_only_containers():
    assert not json_depth_exceeds({"a": [1, {"b": "c"}]}, 3)
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not json_depth_exceeds(json.loads("[" * 32 + "]" * 32), 32)
