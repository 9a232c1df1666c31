"""Slow clients (slowloris): headers must arrive in time, idle connections are closed."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from common.config import SearchConfig
from tests.server.search.conftest import running_server

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def url():
    async def hello(request):
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    with running_server(app, SearchConfig(header_timeout_s=HEADER_TIMEOUT_S)) as served:
        yield served


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_after(sock: socket.socket, send: bytes = b"", every_s: float = 0.2) -> float:
    """Send ``send`` one byte at a time every ``every_s``; seconds until the server closes."""
    start = time.monotonic()
    sock.settimeout(every_s)
    for i in range(200):
        try:
            if i < len(send):
                sock.sendall(send[i : i + 1])
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return time.monotonic() - start


def test_headers_sent_one_byte_at_a_time_are_cut_off(url):
    with connect(url) as sock:
        waited = closed_after(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
    assert HEADER_TIMEOUT_S * 0.9 <= waited < HEADER_TIMEOUT_S + 3


def test_connections_that_send_nothing_are_closed(url):
    sockets = [connect(url) for _ in range(50)]
    try:
        waited = [closed_after(sock) for sock in sockets[:1]]
        assert waited[0] < HEADER_TIMEOUT_S + 3
        for sock in sockets[1:]:  # the others were closed meanwhile too
            sock.settimeout(5)
            assert sock.recv(1) == b""
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(f"{url}/").text == "hello"  # the server is fine


def test_a_keep_alive_connection_serves_several_requests_within_the_deadline(url):
    with httpx.Client(base_url=url) as client:
        for _ in range(3):
            assert client.get("/").text == "hello"
            time.sleep(HEADER_TIMEOUT_S / 2)
        assert client.get("/").text == "hello"
