"""``fedsearch bench-limits``: the service under hostile input, measured from outside.

Starts ``fedsearch serve`` (a child process) on a small store and sends what an attacker
would: 500 MB chunked bodies (JSON and a multipart file), photos of 13,000 x 13,000 and
20,000 x 20,000 pixels (small PNG files), JSON nested 1,000 deep, a malformed multipart
body, headers sent one byte at a time, 200 idle connections. For each it prints the answer,
the time taken, the bytes the client got to send and the service's peak resident memory
above its idle level; and ``/healthz`` latency while a 13,000 x 13,000 photo is decoded
(a second service whose pixel limit lets it decode).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from common.config import Config

MB = 1 << 20
TOKEN = "bench-limits-token"


def post_chunked(
    url: str, path: str, content_type: str, chunks: Iterator[bytes], headers: str = ""
) -> tuple[int, int, bytes]:
    """POST a chunked body from ``chunks`` over a raw socket, stopping as soon as the server
    answers or closes; (status, body bytes sent, response; status 0 if none)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Transfer-Encoding: chunked\r\n{headers}\r\n"
    )
    sock.sendall(head.encode())
    sent = 0
    try:
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = b""
    try:
        while b"\r\n\r\n" not in response or not response.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1") else 0
    return status, sent, response


def gray_png(width: int, height: int) -> bytes:
    """A valid grey PNG of any size that compresses to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer, row = zlib.compressobj(1), b"\x00" + b"\x80" * width
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    return png + chunk(b"IEND", b"")


class PeakRss:
    """Peak resident memory of process ``pid`` while the block runs (10 ms samples)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MB


@contextmanager
def served(work: Path, config: Config, *settings: str) -> Iterator[tuple[str, int]]:
    """``fedsearch serve`` on ``work``'s store in a child process: (url, pid)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--set", f"paths.work_dir={work}", "--set", f"paths.data_dir={config.paths.data}"]
    args += ["--set", f"encoder.pretrained={config.encoder.pretrained}"]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, "FEDSEARCH_ADMIN_TOKEN": TOKEN}
    child = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.3)
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(30)


def attacks(url: str, pid: int) -> list[dict[str, Any]]:
    """Each hostile request once: answer, seconds, bytes sent, peak memory growth."""
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    head = b'--BB\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    cases: list[tuple[str, str, str, Any, str]] = [
        ("500 MB chunked JSON", "/search", "application/json", lambda: _zeros(500), ""),
        ("500 MB chunked JSON to /items", "/items", "application/json", lambda: _zeros(500), auth),
        (
            "500 MB chunked multipart file",
            "/search",
            "multipart/form-data; boundary=BB",
            lambda: iter([head, *_zeros(500)]),
            "",
        ),
        ("JSON nested 1,000 deep", "/search", "application/json", lambda: _deep(), ""),
        (
            "malformed multipart",
            "/search",
            "multipart/form-data; boundary=BB",
            lambda: iter([b"--BB\r\n[]--BB--\r\n"]),
            "",
        ),
    ]
    for side in (13_000, 20_000):
        png = gray_png(side, side)
        body = head + png + b"\r\n--BB--\r\n"
        cases.append(
            (f"{side:,} x {side:,} PNG ({len(png) // 1000} KB)", "/search",
             "multipart/form-data; boundary=BB", lambda body=body: iter([body]), "")
        )  # fmt: skip
    rows = []
    for name, path, content_type, chunks, headers in cases:
        with PeakRss(pid) as memory:
            start = time.perf_counter()
            status, sent, _ = post_chunked(url, path, content_type, chunks(), headers)
            seconds = time.perf_counter() - start
        rows.append(
            {"input": name, "status": status, "seconds": round(seconds, 3),
             "sent_mb": round(sent / MB, 1), "rss_growth_mb": round(memory.growth_mb, 1)}
        )  # fmt: skip
    rows.append(_slow_headers(url))
    return rows


def healthz_during_decode(url: str, pid: int, png: bytes) -> dict[str, Any]:
    """``/healthz`` latency (ms) while ``png`` is decoded by a search request."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def upload() -> None:
        start = time.perf_counter()
        r = httpx.post(f"{url}/search", files={"image": ("b.png", png)}, timeout=300)
        result.update(status=r.status_code, search_seconds=round(time.perf_counter() - start, 2))
        done.set()

    latencies = []
    with PeakRss(pid) as memory, httpx.Client(base_url=url, timeout=30) as client:
        client.get("/healthz")
        threading.Thread(target=upload, daemon=True).start()
        while not done.is_set():
            start = time.perf_counter()
            client.get("/healthz").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.02)
    ms = np.array(latencies)
    return {
        **result,
        "healthz_checks": len(ms),
        "healthz_p50_ms": round(float(np.median(ms)), 1),
        "healthz_max_ms": round(float(ms.max()), 1),
        "rss_growth_mb": round(memory.growth_mb, 1),
    }


def _zeros(mb: int) -> Iterator[bytes]:
    block = b"0" * MB
    yield b'{"text": "'
    for _ in range(mb):
        yield block


def _deep() -> Iterator[bytes]:
    yield b'{"text": ' + b"[" * 1000 + b"]" * 1000 + b"}"


def _slow_headers(url: str) -> dict[str, Any]:
    """Headers at one byte per 0.5 s, plus 200 idle connections: seconds until closed."""
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(200)]
    sock = socket.create_connection((host, int(port)), timeout=0.5)
    start = time.perf_counter()
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    seconds = time.perf_counter() - start
    open_after = 0
    for conn in idle:
        conn.setblocking(False)
        try:
            open_after += conn.recv(1) != b""
        except BlockingIOError:
            open_after += 1
        except OSError:
            pass
        conn.close()
    sock.close()
    return {"input": "headers at 1 byte / 0.5 s", "status": 0, "seconds": round(seconds, 1),
            "sent_mb": 0.0, "rss_growth_mb": 0.0, "idle_connections_left": open_after}  # fmt: skip


def run_limits_bench(config: Config, items: int = 200) -> dict[str, Any]:
    """Build a small store, attack a default service, then time /healthz during a decode."""
    from server.search.base_encoder import encoder_from_config
    from server.search.catalog_build import build_catalog, fashion_items

    with tempfile.TemporaryDirectory(prefix="fedsearch-bench-limits-") as tmp:
        work = Path(tmp)
        store_config = config.model_copy(
            update={"paths": config.paths.model_copy(update={"work_dir": str(work)})}
        )
        encoder = encoder_from_config(store_config)
        build_catalog(store_config, encoder, fashion_items(store_config, items)).close()
        print(f"store of {items} items in {work}; attacking a default service ...", flush=True)
        with served(work, config) as (url, pid):
            idle_mb = psutil.Process(pid).memory_info().rss / MB
            rows = attacks(url, pid)
        print("a service that decodes 13,000 x 13,000 photos (max_image_pixels=2e8) ...")
        with served(work, config, "search.max_image_pixels=200000000") as (url, pid):
            decode = healthz_during_decode(url, pid, gray_png(13_000, 13_000))
    return {"idle_rss_mb": round(idle_mb, 1), "attacks": rows, "decode": decode}


def print_limits_report(report: dict[str, Any]) -> None:
    print(f"\nservice resident memory when idle: {report['idle_rss_mb']} MB")
    print(f"{'input':<36}{'answer':>7}{'seconds':>9}{'sent MB':>9}{'RSS +MB':>9}")
    for row in report["attacks"]:
        answer = row["status"] or "closed"
        print(
            f"{row['input']:<36}{answer:>7}{row['seconds']:>9}{row['sent_mb']:>9}"
            f"{row['rss_growth_mb']:>9}"
        )
    slow = report["attacks"][-1]
    print(f"idle connections still open after the slow client: {slow['idle_connections_left']}")
    d = report["decode"]
    print(
        f"/healthz while a 13,000 x 13,000 PNG decodes ({d['search_seconds']} s, answer "
        f"{d['status']}, RSS +{d['rss_growth_mb']} MB): p50 {d['healthz_p50_ms']} ms, "
        f"max {d['healthz_max_ms']} ms over {d['healthz_checks']} checks"
    )
