"""Benchmark of the search service over HTTP: exact vs ANN on a 100k-item index.

The index holds the real catalog's item vectors plus perturbed copies of them (each copy
``normalize(v + s * g / sqrt(d))``, ``g`` Gaussian, ``s`` uniform in [0.3, 0.6], so
cos(copy, original) is ~0.86-0.96): recall is measured on realistic clusters, not uniform
noise. Queries are text built from catalog attributes ("black casual shoes", "women
watches", ...). For each index kind the service runs in its own process on 127.0.0.1; a
closed-loop load of ``clients`` concurrent keep-alive HTTP clients sends ``requests`` text
queries (after a warm-up), then one client sends a sequential run. Figures: p50/p99
latency and throughput; ANN recall@10 of the service's answers against exact search over
the same vectors; and end-to-end latency over in-process encode + search time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import random
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.config import Config, config_from_dict
from common.encoder import Encoder, create_encoder
from server.catalog_store import Catalog, Item
from server.index import RECALL_K, exact_top_k, recall_at_k
from server.indexer import (
    create_catalog,
    fashion_items,
    item_vectors,
    open_catalog,
    store_path,
)
from server.query_encoder import encode_text_trimmed

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 40
SEQUENTIAL_REQUESTS = 200
IN_PROCESS_QUERIES = 200


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


def text_queries(items: list[Item], n: int, seed: int = 0) -> list[str]:
    """Distinct shopper-like text queries from the catalog's attributes."""
    found: set[str] = set()
    for it in items:
        a = it.attributes
        colour, gender, usage = a.get("baseColour", ""), a.get("gender", ""), a.get("usage", "")
        category = it.category
        for parts in ((colour, category), (gender, category), (usage, category), (category,)):
            if all(parts):
                found.add(" ".join(parts).lower())
        words = it.title.split()
        if len(words) > 2:
            found.add(" ".join(words[1:4]).lower())
    queries = sorted(found)
    random.Random(seed).shuffle(queries)
    return queries[:n]


def _catalog_vectors(config: Config, encoder: Encoder) -> tuple[list[Item], np.ndarray]:
    """The real catalog and its item vectors (from the served store when it matches)."""
    items = fashion_items(config)
    try:
        store = open_catalog(config)
    except FileNotFoundError:
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
    vectors = item_vectors(
        encoder,
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

    from server.search_commands import apply_thread_settings
    from server.search_service import create_app

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


def run_load(
    url: str, queries: list[str], clients: int, requests: int, k: int = RECALL_K
) -> dict[str, Any]:
    """Closed loop: ``clients`` threads, each with a keep-alive client, ``requests`` in all.

    Returns latencies (ms), failures, elapsed seconds and each query's result ids.
    """
    latencies: list[float] = []
    failures: list[str] = []
    answers: dict[str, list[str]] = {}
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                text = queries[i % len(queries)]
                start = time.perf_counter()
                try:
                    response = client.post("/search", json={"text": text, "k": k})
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    if response.status_code != 200:
                        failures.append(f"HTTP {response.status_code}")
                        continue
                    latencies.append(elapsed)
                    answers.setdefault(text, [r["id"] for r in response.json()["results"]])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latencies_ms": latencies,
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
        "throughput_qps": round(len(lat) / load["elapsed_s"], 1),
    }


def in_process_ms(
    encoder: Encoder, catalog: Catalog, queries: list[str], k: int = RECALL_K
) -> float:
    """Median time of encode + search for one query, in this process, one at a time."""
    times = []
    for text in queries:
        start = time.perf_counter()
        vector = encode_text_trimmed(encoder, [text])[0]
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
    from server.search_commands import apply_thread_settings

    apply_thread_settings(config.search.torch_threads, config.search.faiss_threads)
    encoder = create_encoder(
        config.encoder.model,
        config.encoder.pretrained,
        work_dir=config.paths.work,
        device=config.encoder.device,
    )
    real_items, real_vectors = _catalog_vectors(config, encoder)
    vectors = perturbed_copies(real_vectors, items)
    all_items = _expanded_items(real_items, items)
    queries = text_queries(real_items, 1000)
    query_vectors = np.concatenate(
        [encode_text_trimmed(encoder, queries[i : i + 64]) for i in range(0, len(queries), 64)]
    )
    truth = exact_top_k(vectors, np.arange(items, dtype=np.int64), query_vectors, RECALL_K)
    truth_ids = {q: [all_items[j].id for j in row] for q, row in zip(queries, truth, strict=True)}
    results: dict[str, Any] = {
        "command": command or "server.search_bench.run_search_bench()",
        "items": items,
        "clients": clients,
        "requests": requests,
        "queries": len(queries),
        "encoder_version": encoder.version,
        "kinds": {},
    }
    with tempfile.TemporaryDirectory(prefix="fedsearch-bench-") as tmp:
        for kind in kinds:
            results["kinds"][kind] = _bench_kind(
                config, encoder, kind, all_items, vectors, queries, truth_ids, Path(tmp),
                clients=clients, requests=requests,
            )  # fmt: skip
    _print(results)
    if out:
        Path(out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _bench_kind(
    config: Config,
    encoder: Encoder,
    kind: str,
    items: list[Item],
    vectors: np.ndarray,
    queries: list[str],
    truth_ids: dict[str, list[str]],
    tmp: Path,
    *,
    clients: int,
    requests: int,
) -> dict[str, Any]:
    folder = tmp / kind
    work = tmp / "work"
    print(f"[{kind}] building the index over {len(items):,} items ...", flush=True)
    catalog = create_catalog(config, items, vectors, encoder.version, folder=folder, kind=kind)
    info = catalog.index.info
    in_process = in_process_ms(encoder, catalog, queries[:IN_PROCESS_QUERIES])
    catalog.close()
    del catalog
    served = config_from_dict(
        {
            "paths": {"work_dir": str(work)},
            "search": {"store_dir": str(folder), "exact_max_items": config.search.exact_max_items},
        },
        config,
    )
    print(f"[{kind}] serving it and sending {requests:,} queries ...", flush=True)
    with ServiceProcess(served) as service:
        run_load(service.url, queries, clients, WARMUP_REQUESTS)
        loaded = run_load(service.url, queries, clients, requests)
        single = run_load(service.url, queries, 1, SEQUENTIAL_REQUESTS)
    answers = {**single["answers"], **loaded["answers"]}
    code = {item.id: i for i, item in enumerate(items)}
    found = np.array([_codes(answers[q], code, len(truth_ids[q])) for q in answers])
    want = np.array([_codes(truth_ids[q], code, len(truth_ids[q])) for q in answers])
    concurrent, sequential = _summary(loaded), _summary(single)
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
        "recall_at_10_vs_exact": round(recall_at_k(found, want), 4),
        "recall_queries": len(answers),
        "in_process_p50_ms": round(in_process, 2),
        "e2e_over_in_process_p50": round(sequential["p50_ms"] / in_process, 2),
    }


def _codes(ids: list[str], code: dict[str, int], width: int) -> list[int]:
    """Item ids as row numbers, -1 padded to ``width``, for ``recall_at_k``."""
    rows = [code[i] for i in ids][:width]
    return rows + [-1] * (width - len(rows))


def _print(results: dict[str, Any]) -> None:
    print(
        f"\nsearch benchmark: {results['items']:,} items, {results['clients']} concurrent "
        f"clients, {results['requests']:,} text queries per index, 127.0.0.1, encoder "
        f"{results['encoder_version']}"
    )
    header = (
        f"{'index':<18}{'clients':>8}{'p50 ms':>9}{'p99 ms':>9}{'q/s':>8}{'failed':>8}"
        f"{'recall@10':>11}{'in-proc ms':>12}{'e2e/in-proc':>12}"
    )
    print(header)
    print("-" * len(header))
    for kind, r in results["kinds"].items():
        idx = r["index"]
        name = kind if kind == "exact" else f"ivf{idx['nlist']}/np{idx['nprobe']}"
        for label, s in (("concurrent", r["concurrent"]), ("sequential", r["sequential"])):
            clients = results["clients"] if label == "concurrent" else 1
            extra = (
                f"{r['recall_at_10_vs_exact']:>11.4f}{r['in_process_p50_ms']:>12.2f}"
                f"{r['e2e_over_in_process_p50']:>12.2f}"
                if label == "sequential"
                else ""
            )
            print(
                f"{name:<18}{clients:>8}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
                f"{s['throughput_qps']:>8.1f}{s['failed']:>8}{extra}"
            )
    print(f"command: {results['command']}")
    for kind, r in results["kinds"].items():
        if kind == "ivf":
            verdict = "meets" if r["recall_at_10_vs_exact"] >= 0.95 else "BELOW"
            p99 = r["concurrent"]["p99_ms"]
            print(
                f"ANN recall@10 {r['recall_at_10_vs_exact']:.4f} {verdict} the 0.95 target; "
                f"p99 at {results['clients']} clients {p99:.1f} ms "
                f"({'meets' if p99 <= 50 else 'misses'} the 50 ms target)"
            )
