"""A cheap closed-loop HTTP load generator for the search benchmark.

The load shares the CPUs with the service, so each request should cost the client as
little as possible: requests are built as bytes before the clock starts, each client thread
keeps one HTTP/1.1 connection on a plain socket, and a response is read only as far as its
``Content-Length``; bodies are parsed after the run. Workloads: ``uniform`` sends each query
text once, in order (distinct queries: a cache cannot help); ``zipf`` draws texts with
probability proportional to ``1 / rank ** s`` (real search traffic repeats its head).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WORKLOADS = ("uniform", "zipf")
ZIPF_EXPONENT = 1.0


def workload_texts(
    kind: str, queries: list[str], count: int, seed: int = 0, exponent: float = ZIPF_EXPONENT
) -> list[str]:
    """``count`` query texts of workload ``kind`` drawn from ``queries``."""
    if kind == "uniform":
        if count > len(queries):
            raise ValueError(f"uniform: {count} requests but only {len(queries)} distinct queries")
        return queries[:count]
    if kind == "zipf":
        weights = 1.0 / np.arange(1, len(queries) + 1) ** exponent
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(queries), size=count, p=weights / weights.sum())
        return [queries[i] for i in picks]
    raise ValueError(f"unknown workload {kind!r} ({', '.join(WORKLOADS)})")


def search_request(text: str, k: int) -> bytes:
    body = json.dumps({"text": text, "k": k}).encode()
    head = (
        "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class LoadResult:
    """Client-side latencies (ms), the service's ``took_ms``, failures, wall seconds, each
    sent text's first answer (result ids) and the load generator's own CPU seconds."""

    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    answers: dict[str, list[str]] = field(default_factory=dict)


class _Connection:
    """One keep-alive connection that sends prepared requests and reads whole responses."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        self.sock.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, rest = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        length = next(
            int(line.split(":", 1)[1])
            for line in head.split("\r\n")[1:]
            if line.lower().startswith("content-length:")
        )
        self.buffer = rest
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head.split(" ", 2)[1]), body

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the service closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_load(
    url: str, texts: list[str], clients: int, k: int = 10, timeout: float = 30.0
) -> LoadResult:
    """Send ``texts`` (one request each) from ``clients`` closed-loop threads."""
    host, port = url.removeprefix("http://").split(":")
    requests = [search_request(t, k) for t in texts]
    bodies: list[tuple[int, float, int, bytes]] = []
    result = LoadResult()
    counter = iter(range(len(requests)))
    lock = threading.Lock()

    def worker() -> None:
        connection = _Connection(host, int(port), timeout)
        try:
            while (i := next(counter, None)) is not None:
                start = time.perf_counter()
                try:
                    status, body = connection.exchange(requests[i])
                except (OSError, ValueError, StopIteration) as exc:
                    connection.close()  # reconnects on the next request
                    with lock:
                        result.failures.append(repr(exc))
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    bodies.append((i, elapsed, status, body))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.elapsed_s = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - cpu
    _parse(bodies, texts, result)
    return result


def _parse(bodies: list[tuple[int, float, int, bytes]], texts: list[str], out: LoadResult) -> None:
    for i, elapsed, status, body in bodies:
        if status != 200:
            out.failures.append(f"HTTP {status}")
            continue
        data: dict[str, Any] = json.loads(body)
        out.latencies_ms.append(elapsed)
        out.server_ms.append(data["took_ms"])
        out.answers.setdefault(texts[i], [r["id"] for r in data["results"]])


def summary(load: LoadResult) -> dict[str, float]:
    lat = np.array(load.latencies_ms)
    return {
        "requests": len(lat),
        "failed": len(load.failures),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "server_p50_ms": round(float(np.percentile(load.server_ms, 50)), 2),
        "throughput_qps": round(len(lat) / load.elapsed_s, 1),
        "client_cpu_ms_per_query": round(load.client_cpu_s * 1000 / max(1, len(lat)), 3),
    }
