"""The search service in a child process for the benchmark, and what is read off it: its CPU
time, its memory and its ``/metrics`` counters (CPU by stage, query cache hits)."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from common.config import Config
from server.search.threads import apply_thread_settings

STARTUP_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_child(config: Config, port: int) -> None:
    """Run the service (its own process) on the store named by ``config``."""
    import uvicorn

    from server.search.service import create_app

    logging.basicConfig(level=logging.WARNING)
    apply_thread_settings(config.search)
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class ServiceProcess:
    """The service in a child process, stopped on exit."""

    def __init__(self, config: Config) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=_serve_child, args=(config, self.port), daemon=True)

    def __enter__(self) -> ServiceProcess:
        self.process.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                raise RuntimeError(f"the service exited with code {self.process.exitcode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the service did not start within {STARTUP_TIMEOUT_S} s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now and at its peak, and its anonymous (heap) part, in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
        return {
            "rss_mb": fields["VmRSS"],
            "peak_rss_mb": fields["VmHWM"],
            "anon_mb": fields["RssAnon"],
            "file_mb": fields["RssFile"],
        }

    def counters(self) -> dict[str, float]:
        """``/metrics`` counters: ``stage:<name>`` CPU seconds, cache hits and misses."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "fedsearch_stage_cpu_seconds_total":
                    out[f"stage:{s.labels['stage']}"] = s.value
                elif s.name in (
                    "fedsearch_query_cache_hits_total",
                    "fedsearch_query_cache_misses_total",
                ):
                    out[s.name.removeprefix("fedsearch_query_cache_").removesuffix("_total")] = (
                        s.value
                    )
        return out

    def version(self) -> dict:
        return httpx.get(f"{self.url}/version", timeout=10).json()
