"""Benchmark of the search service over HTTP: exact vs ANN on a 100k-item index.

The index holds the real catalog's item vectors plus perturbed copies of them (each copy
``normalize(v + s * g / sqrt(d))``, ``g`` Gaussian, ``s`` uniform in [0.3, 0.6], so
cos(copy, original) is ~0.86-0.96): recall is measured on realistic clusters, not uniform
noise. Queries are text built from catalog attributes ("black casual shoes", "women
watches", ...): some tune IVF's nprobe, the others (held out) are sent. For each index kind
the service runs in its own process on 127.0.0.1; a closed-loop load of ``clients``
concurrent keep-alive HTTP clients sends ``requests`` text queries (after a warm-up), then
one client sends a sequential run. Figures: p50/p99 latency (client side, and the server's
own time), throughput, the server's CPU time per query (comparable across machine load),
ANN recall@10 of the service's answers against exact search over the same vectors, and
end-to-end latency over in-process encode + search time.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil

from common.config import Config, config_from_dict
from common.model.encoder import Encoder
from common.security.versions import latest_version
from server.search.catalog import Catalog, CatalogStoreError, Item
from server.search.catalog_build import (
    catalog_text_queries,
    create_catalog,
    encoder_from_config,
    fashion_items,
    open_catalog,
    query_text_encoder,
    store_path,
)
from server.search.threads import apply_thread_settings
from server.search.vector_index import RECALL_K, ann_recall_at_k, exact_top_k

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 40
SEQUENTIAL_REQUESTS = 200
IN_PROCESS_QUERIES = 200
TUNING_QUERIES = 300
LOAD_QUERIES = 1000


def perturbed_copies(vectors: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """The original rows followed by perturbed copies, ``total`` rows in all."""
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    extra = max(0, total - n)
    source = np.resize(np.arange(n), extra)
    scale = rng.uniform(0.3, 0.6, size=(extra, 1)).astype(np.float32)
    noise = rng.standard_normal((extra, dim)).astype(np.float32) / math.sqrt(dim)
    copies = vectors[source] + scale * noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([vectors, copies.astype(np.float32)])[:total]


def _catalog_vectors(config: Config, encoder: Encoder) -> tuple[list[Item], np.ndarray]:
    """The real catalog and its item vectors (from the served store when it matches)."""
    items = fashion_items(config)
    try:
        store = open_catalog(config)
    except (FileNotFoundError, CatalogStoreError):
        store = None
    if store is not None and store.encoder_version == encoder.version:
        by_id = {it.id: it for it in items}
        ids, vectors = store.all_vectors()
        store.close()
        keep = [i for i, item_id in enumerate(ids) if item_id in by_id]
        if len(keep) == len(items):
            print(f"item vectors: {len(keep):,} from the store at {store_path(config)}")
            return [by_id[ids[i]] for i in keep], vectors[keep]
    print(f"item vectors: encoding {len(items):,} catalog items")
    encoder.batch_size = config.encoder.batch_size
    vectors = encoder.encode_items(
        [it.title for it in items],
        [it.photo for it in items],
        text_weight=config.encoder.text_weight,
        image_weight=config.encoder.image_weight,
        progress=True,
    )
    return items, vectors


def _expanded_items(items: list[Item], total: int) -> list[Item]:
    out = list(items)
    for j in range(total - len(items)):
        src = items[j % len(items)]
        out.append(dataclasses.replace(src, id=f"{src.id}-c{j // len(items) + 1}"))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_child(config: Config, port: int) -> None:
    """Run the service (its own process) on the store named by ``config``."""
    import uvicorn

    from server.search.service import create_app

    logging.basicConfig(level=logging.WARNING)
    apply_thread_settings(config.search.torch_threads, config.search.faiss_threads)
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")


class ServiceProcess:
    """The service in a child process, stopped on exit."""

    def __init__(self, config: Config) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=_serve_child, args=(config, self.port), daemon=True)

    def __enter__(self) -> ServiceProcess:
        self.process.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                raise RuntimeError(f"the service exited with code {self.process.exitcode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the service did not start within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_load(
    url: str, queries: list[str], clients: int, requests: int, k: int = RECALL_K
) -> dict[str, Any]:
    """Closed loop: ``clients`` threads, each with one keep-alive HTTP/1.1 connection,
    ``requests`` in all. The clients use the standard library's ``http.client``: the load
    generator shares the CPUs with the service, so it should cost as little as it can.

    Returns client-side latencies and the server's own ``took_ms`` (ms), failures, elapsed
    seconds and each query's result ids.
    """
    address = urlsplit(url)
    latencies: list[float] = []
    server_ms: list[float] = []
    failures: list[str] = []
    answers: dict[str, list[str]] = {}
    counter = iter(range(requests))
    lock = threading.Lock()
    headers = {"Content-Type": "application/json"}

    def worker() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                text = queries[i % len(queries)]
                payload = json.dumps({"text": text, "k": k})
                start = time.perf_counter()
                try:
                    connection.request("POST", "/search", payload, headers)
                    response = connection.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # reconnects on the next request
                    with lock:
                        failures.append(repr(exc))
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                if response.status != 200:
                    with lock:
                        failures.append(f"HTTP {response.status}")
                    continue
                body = json.loads(data)
                with lock:
                    latencies.append(elapsed)
                    server_ms.append(body["took_ms"])
                    answers.setdefault(text, [r["id"] for r in body["results"]])
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latencies_ms": latencies,
        "server_ms": server_ms,
        "failures": failures,
        "elapsed_s": time.perf_counter() - start,
        "answers": answers,
    }


def _summary(load: dict[str, Any]) -> dict[str, float]:
    lat = np.array(load["latencies_ms"])
    return {
        "requests": len(lat),
        "failed": len(load["failures"]),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "server_p50_ms": round(float(np.percentile(load["server_ms"], 50)), 2),
        "throughput_qps": round(len(lat) / load["elapsed_s"], 1),
    }


def in_process_ms(
    encoder: Encoder, catalog: Catalog, queries: list[str], k: int = RECALL_K
) -> float:
    """Median time of encode + search for one query, in this process, one at a time."""
    times = []
    for text in queries:
        start = time.perf_counter()
        vector = encoder.encode_text([text])[0]
        catalog.search(vector, k)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def run_search_bench(
    config: Config,
    *,
    items: int = 100_000,
    clients: int = 8,
    requests: int = 2000,
    kinds: list[str] | tuple[str, ...] = ("exact", "ivf"),
    out: str | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the benchmark; print the table and return (and optionally write) the figures.

    Queries are split: ``TUNING_QUERIES`` tune IVF's nprobe at build time, the others are
    sent to the service and scored against exact search, so recall is on held-out queries.
    """

    logging.getLogger("httpx").setLevel(logging.WARNING)
    apply_thread_settings(config.search.torch_threads, config.search.faiss_threads)
    encoder = encoder_from_config(config)
    real_items, real_vectors = _catalog_vectors(config, encoder)
    setup = _Setup(
        items=_expanded_items(real_items, items),
        vectors=perturbed_copies(real_vectors, items),
        queries=catalog_text_queries(real_items, TUNING_QUERIES + LOAD_QUERIES),
    )
    tuning, load = setup.queries[:TUNING_QUERIES], setup.queries[TUNING_QUERIES:]
    queries = query_text_encoder(config, encoder)  # as the service encodes them
    tuning_vectors = queries.encode_text(tuning)
    rows = np.arange(items, dtype=np.int64)
    truth = {"exact": exact_top_k(setup.vectors, rows, queries.encode_text(load), RECALL_K)}
    if queries.text_precision != "float32":  # what lower-precision query vectors cost
        truth["float32"] = exact_top_k(setup.vectors, rows, encoder.encode_text(load), RECALL_K)
    results: dict[str, Any] = {
        "command": command or "server.search.bench.run_search_bench()",
        "items": items,
        "clients": clients,
        "requests": requests,
        "tuning_queries": len(tuning),
        "load_queries": len(load),
        "encoder_version": encoder.version,
        "query_precision": queries.text_precision,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "kinds": {},
    }
    with tempfile.TemporaryDirectory(prefix="fedsearch-bench-") as tmp:
        for kind in kinds:
            print(f"[{kind}] building the index over {items:,} items ...", flush=True)
            catalog = create_catalog(
                config, setup.items, setup.vectors, encoder.version,
                folder=Path(tmp) / kind, kind=kind, query_vectors=tuning_vectors,
            )  # fmt: skip
            figures = _bench_kind(config, queries, catalog, load, truth, clients, requests)
            results["kinds"][kind] = figures
    results["load_average_after"] = os.getloadavg()[0]
    _print(results)
    if out:
        Path(out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


@dataclasses.dataclass
class _Setup:
    items: list[Item]
    vectors: np.ndarray
    queries: list[str]


def _bench_kind(
    config: Config,
    encoder: Encoder,
    catalog: Catalog,
    queries: list[str],
    truth: dict[str, np.ndarray],
    clients: int,
    requests: int,
) -> dict[str, Any]:
    """One index kind, served and loaded. ``encoder`` encodes queries as the service does;
    ``truth``: exact top-k rows per held-out query ("exact", and "float32" when the
    service's query vectors are of lower precision)."""
    info, folder = catalog.index.info, catalog.folder
    in_process = in_process_ms(encoder, catalog, queries[:IN_PROCESS_QUERIES])
    row_of = {item_id: row for row, item_id in enumerate(catalog.all_vectors()[0])}
    catalog.close()
    served = config_from_dict(
        {
            "paths": {"work_dir": str(folder.parent / "work")},  # empty registry: identity
            "encoder": {"pretrained": _pinned_checkpoint(config)},
            "search": {"store_dir": str(folder)},
        },
        config,
    )
    print(f"[{info.kind}] serving it and sending {requests:,} queries ...", flush=True)
    with ServiceProcess(served) as service:
        run_load(service.url, queries, clients, WARMUP_REQUESTS)
        cpu_before = process_cpu_s(service.process.pid)
        loaded = run_load(service.url, queries, clients, requests)
        server_cpu = process_cpu_s(service.process.pid) - cpu_before
        single = run_load(service.url, queries, 1, SEQUENTIAL_REQUESTS)
    answers = {**single["answers"], **loaded["answers"]}
    asked = [i for i, q in enumerate(queries) if q in answers]
    found = np.array([_codes(answers[queries[i]], row_of, RECALL_K) for i in asked])
    concurrent, sequential = _summary(loaded), _summary(single)
    recall = {name: round(ann_recall_at_k(found, top[asked]), 4) for name, top in truth.items()}
    return {
        "index": {
            "kind": info.kind,
            "nlist": info.nlist,
            "nprobe": info.nprobe,
            "build_recall_at_10": info.recall_at_10,
            "build_seconds": info.build_seconds,
        },
        "concurrent": concurrent,
        "sequential": sequential,
        "server_cpu_ms_per_query": round(server_cpu * 1000 / requests, 2),
        "recall_at_10_vs_exact": recall["exact"],
        **({"recall_at_10_vs_float32": recall["float32"]} if "float32" in recall else {}),
        "recall_queries": len(asked),
        "in_process_p50_ms": round(in_process, 2),
        "e2e_over_in_process_p50": round(sequential["p50_ms"] / in_process, 2),
    }


def _pinned_checkpoint(config: Config) -> str:
    """``encoder.pretrained`` as a folder, so the service finds it from another work dir."""
    if config.encoder.pretrained != "latest":
        return config.encoder.pretrained
    folder = latest_version(config.paths.encoders)
    return str(folder.resolve()) if folder is not None else "latest"


def _codes(ids: list[str], code: dict[str, int], width: int) -> list[int]:
    """Item ids as row numbers, -1 padded to ``width``, for ``ann_recall_at_k``."""
    rows = [code[i] for i in ids][:width]
    return rows + [-1] * (width - len(rows))


def _print(results: dict[str, Any]) -> None:
    print(
        f"\nsearch benchmark: {results['items']:,} items, {results['requests']:,} text queries "
        f"per index over HTTP on 127.0.0.1, encoder {results['encoder_version']} (query "
        f"texts in {results['query_precision']})\n"
        f"{results['cpu_count']} CPUs, load average {results['load_average_before']:.1f} before "
        f"and {results['load_average_after']:.1f} after (other processes share the CPUs)"
    )
    header = (
        f"{'index':<16}{'clients':>8}{'p50 ms':>9}{'p99 ms':>9}{'server p50':>11}{'q/s':>8}"
        f"{'failed':>7}{'CPU ms/q':>9}{'recall@10':>10}{'in-proc':>9}{'e2e/in-proc':>12}"
    )
    print(header)
    print("-" * len(header))
    for kind, r in results["kinds"].items():
        idx = r["index"]
        name = kind if kind == "exact" else f"ivf{idx['nlist']}/np{idx['nprobe']}"
        for label in ("concurrent", "sequential"):
            s = r[label]
            row = (
                f"{name:<16}{results['clients'] if label == 'concurrent' else 1:>8}"
                f"{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['server_p50_ms']:>11.2f}"
                f"{s['throughput_qps']:>8.1f}{s['failed']:>7}"
            )
            if label == "concurrent":
                row += f"{r['server_cpu_ms_per_query']:>9.2f}{r['recall_at_10_vs_exact']:>10.4f}"
            else:
                row += (
                    f"{'':>19}{r['in_process_p50_ms']:>9.2f}{r['e2e_over_in_process_p50']:>12.2f}"
                )
            print(row)
    print(
        f"recall@10: the service's answers vs exact search, {results['load_queries']} held-out "
        f"queries ({results['tuning_queries']} others tuned nprobe); e2e/in-proc: sequential "
        "p50 over in-process encode + search p50"
    )
    for kind, r in results["kinds"].items():
        if "recall_at_10_vs_float32" in r:
            print(
                f"{kind}: query texts in {results['query_precision']}; recall@10 against exact "
                f"search with float32 query vectors {r['recall_at_10_vs_float32']:.4f}"
            )
    print(f"command: {results['command']}")
    if "ivf" in results["kinds"]:
        r = results["kinds"]["ivf"]
        recall, p99 = r["recall_at_10_vs_exact"], r["concurrent"]["p99_ms"]
        print(
            f"ANN: recall@10 {recall:.4f} ({'meets' if recall >= 0.95 else 'BELOW'} the 0.95 "
            f"target); p99 at {results['clients']} clients {p99:.1f} ms "
            f"({'meets' if p99 <= 50 else 'misses'} the 50 ms target)"
        )
