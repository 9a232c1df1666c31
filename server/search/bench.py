"""Benchmark of the search service over HTTP: index kinds and query workloads, 100k items.

The index holds the real catalog's item vectors plus perturbed copies of them (each copy
``normalize(v + s * g / sqrt(d))``, ``g`` Gaussian, ``s`` uniform in [0.3, 0.6], so
cos(copy, original) is ~0.86-0.96): recall is measured on realistic clusters, not uniform
noise. Queries are text built from catalog attributes and titles ("black casual shoes",
"women watches", ...): some tune IVF's nprobe, the others (held out) are sent. For each index
kind the service runs in its own process on 127.0.0.1 and gets, after a warm-up, a
closed-loop load of ``clients`` concurrent keep-alive clients (``load_generator``) for each
workload (uniform: distinct queries; zipf: repeating ones, which the query cache serves),
then a sequential run of one client. Figures: p50/p99 latency (client side, and the server's
own time), throughput, the server's CPU time per query and its split by stage (from
``/metrics``), the load generator's CPU per query, query cache hit rate, resident memory,
ANN recall@10 of the service's answers against exact search over the same vectors (with the
served query vectors, and with the base encoder's float32 ones), and end-to-end latency
over in-process encode + search time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from common.cli import UsageError
from common.config import Config, config_from_dict
from common.model.encoder import Encoder
from common.model.precision import TextTower
from common.model.student_files import query_model_folder
from common.security.versions import latest_version
from server.search.base_encoder import encoder_from_config
from server.search.bench_report import print_results
from server.search.bench_service import ServiceProcess
from server.search.catalog import Catalog, CatalogStoreError, Item
from server.search.catalog_build import (
    catalog_text_queries,
    create_catalog,
    encode_catalog_items,
    fashion_items,
    open_catalog,
    store_path,
)
from server.search.index_kinds import IndexKind
from server.search.load_generator import WORKLOADS, LoadResult, run_load, summary, workload_texts
from server.search.query_model import query_text_tower
from server.search.threads import apply_thread_settings
from server.search.vector_index import RECALL_K, ann_recall_at_k, exact_top_k

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 40
SEQUENTIAL_REQUESTS = 200
IN_PROCESS_QUERIES = 200
TUNING_QUERIES = 1000


def perturbed_copies(vectors: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """The original rows followed by perturbed copies, ``total`` rows in all (built in
    chunks, so a million rows need no more than their own memory)."""
    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    out = np.empty((total, dim), dtype=np.float32)
    out[: min(n, total)] = vectors[:total]
    for start in range(n, total, 65536):
        rows = np.arange(start, min(total, start + 65536))
        scale = rng.uniform(0.3, 0.6, size=(len(rows), 1)).astype(np.float32)
        noise = rng.standard_normal((len(rows), dim)).astype(np.float32) / math.sqrt(dim)
        copies = vectors[(rows - n) % n] + scale * noise
        out[rows] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return out


def _catalog_vectors(
    config: Config, encoder: Encoder, items: list[Item]
) -> tuple[list[Item], np.ndarray]:
    """The real catalog's ``items`` and their vectors (from the served store when it
    matches, in its order)."""
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
    return items, encode_catalog_items(config, encoder, items)


def _expanded_items(items: list[Item], total: int) -> list[Item]:
    out = list(items)
    for j in range(total - len(items)):
        src = items[j % len(items)]
        out.append(dataclasses.replace(src, id=f"{src.id}-c{j // len(items) + 1}"))
    return out


def in_process_ms(tower: TextTower, catalog: Catalog, queries: list[str], k: int = RECALL_K):
    """Median time of encode + search for one query, in this process, one at a time."""
    times = []
    for text in queries:
        start = time.perf_counter()
        catalog.search(tower.encode_text([text])[0], k)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


@dataclasses.dataclass
class _Setup:
    """Vectors and items served; held-out ``load`` texts (recall truth row by row), split
    into disjoint pools so that no workload finds another's queries in the cache."""

    items: list[Item]
    vectors: np.ndarray
    load: list[str]
    truth: dict[str, np.ndarray]
    served: Config
    requests: int

    def pool(self, name: str) -> list[str]:
        ends = {"warmup": WARMUP_REQUESTS, "uniform": WARMUP_REQUESTS + self.requests}
        ends["sequential"] = ends["uniform"] + SEQUENTIAL_REQUESTS
        starts = {"warmup": 0, "uniform": ends["warmup"], "sequential": ends["uniform"]}
        if name == "zipf":
            return self.load[ends["sequential"] :]
        return self.load[starts[name] : ends[name]]


def run_search_bench(
    config: Config,
    *,
    items: int = 100_000,
    clients: int = 8,
    requests: int = 2000,
    kinds: list[str] | tuple[str, ...] = ("ivf", "ivf-pq"),
    workloads: list[str] | tuple[str, ...] = WORKLOADS,
    out: str | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the benchmark; print the table and return (and optionally write) the figures."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    fashion = fashion_items(config)
    needed = TUNING_QUERIES + WARMUP_REQUESTS + requests + SEQUENTIAL_REQUESTS + 100
    texts = catalog_text_queries(fashion, 1_000_000)  # sorted, then shuffled: order-free
    if len(texts) < needed:  # before any model is loaded or item encoded
        most = len(texts) - (needed - requests)
        raise UsageError(
            f"--requests {requests}: the catalog gives {len(texts):,} distinct queries, "
            f"enough for at most {max(most, 0):,} requests per workload"
        )
    apply_thread_settings(config.search)
    encoder = encoder_from_config(config)
    tower, choice = query_text_tower(config, encoder)  # as the service will encode queries
    real_items, real_vectors = _catalog_vectors(config, encoder, fashion)
    tuning, load = texts[:TUNING_QUERIES], texts[TUNING_QUERIES:]
    vectors = perturbed_copies(real_vectors, items)
    rows = np.arange(items, dtype=np.int64)
    setup = _Setup(
        items=_expanded_items(real_items, items),
        vectors=vectors,
        load=load,
        truth={
            "served": exact_top_k(vectors, rows, tower.encode_text(load), RECALL_K),
            "float32": exact_top_k(vectors, rows, encoder.encode_text(load), RECALL_K),
        },
        served=_served_config(config, choice.precision),
        requests=requests,
    )
    results: dict[str, Any] = {
        "command": command or "server.search.bench.run_search_bench()",
        "items": items,
        "clients": clients,
        "requests": requests,
        "workloads": list(workloads),
        "tuning_queries": len(tuning),
        "encoder_version": encoder.version,
        "query_model": tower.version,
        "query_precision": choice.precision,
        "query_runtime": config.search.query_runtime,
        "precision_reason": choice.reason,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "kinds": {},
    }
    tuning_vectors = tower.encode_text(tuning)
    with tempfile.TemporaryDirectory(prefix="fedsearch-bench-") as tmp:
        for kind in kinds:
            print(f"[{kind}] building the index over {items:,} items ...", flush=True)
            # create_catalog refuses a kind outside IndexKind
            catalog = create_catalog(
                config, setup.items, setup.vectors, encoder.version,
                folder=Path(tmp) / kind, kind=cast(IndexKind, kind), query_vectors=tuning_vectors,
            )  # fmt: skip
            results["kinds"][kind] = _bench_kind(
                setup, tower, catalog, clients, requests, list(workloads)
            )
    results["load_average_after"] = os.getloadavg()[0]
    print_results(results)
    if out:
        Path(out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _served_config(config: Config, precision: str) -> Config:
    """The service's config: its own empty work dir (the identity adapter), the encoder and
    query model pinned to folders, the precision measured here."""
    query_model = config.encoder.query_model
    if query_model:
        query_model = str(query_model_folder(query_model, config.paths.work).resolve())
    return config_from_dict(
        {
            "encoder": {"pretrained": _pinned_checkpoint(config), "query_model": query_model},
            "search": {"query_precision": precision},
        },
        config,
    )


def _bench_kind(
    setup: _Setup,
    tower: TextTower,
    catalog: Catalog,
    clients: int,
    requests: int,
    workloads: list[str],
) -> dict[str, Any]:
    """One index kind, served and loaded with each workload, then one sequential client."""
    info, folder = catalog.index.info, catalog.folder
    in_process = in_process_ms(tower, catalog, setup.load[:IN_PROCESS_QUERIES])
    catalog.close()
    served = config_from_dict(
        {"paths": {"work_dir": str(folder.parent / "work")}, "search": {"store_dir": str(folder)}},
        setup.served,
    )
    figures: dict[str, Any] = {"index": dataclasses.asdict(info), "workloads": {}}
    answers: dict[str, list[str]] = {}
    print(f"[{info.kind}] serving it ({', '.join(workloads)}) ...", flush=True)
    with ServiceProcess(served) as service:
        for workload in workloads:
            if workload == "zipf":
                warmup = workload_texts("zipf", setup.pool("zipf"), WARMUP_REQUESTS, seed=1)
                texts = workload_texts("zipf", setup.pool("zipf"), requests, seed=2)
            else:
                warmup, texts = setup.pool("warmup"), setup.pool("uniform")
            run_load(service.url, warmup, clients)
            loaded, split = _measured(service, texts, clients)
            answers.update(loaded.answers if workload == "uniform" else {})
            figures["workloads"][workload] = {**summary(loaded), **split}
        single = run_load(service.url, setup.pool("sequential"), 1)
        figures["memory"] = service.memory_mb()
    answers.update(single.answers)
    sequential = summary(single)
    row_of = {item.id: row for row, item in enumerate(setup.items)}
    asked = [i for i, q in enumerate(setup.load) if q in answers]
    found = np.array([_codes(answers[setup.load[i]], row_of, RECALL_K) for i in asked])
    figures.update(
        sequential=sequential,
        recall_at_10_vs_exact=round(ann_recall_at_k(found, setup.truth["served"][asked]), 4),
        recall_at_10_vs_float32=round(ann_recall_at_k(found, setup.truth["float32"][asked]), 4),
        recall_queries=len(asked),
        in_process_p50_ms=round(in_process, 2),
        e2e_over_in_process_p50=round(sequential["p50_ms"] / in_process, 2),
    )
    return figures


def _measured(
    service: ServiceProcess, texts: list[str], clients: int
) -> tuple[LoadResult, dict[str, Any]]:
    """One load run, with the service's CPU per query and its split by stage."""
    before, cpu = service.counters(), service.cpu_s()
    loaded = run_load(service.url, texts, clients)
    total, after = service.cpu_s() - cpu, service.counters()
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    n = max(1, len(loaded.latencies_ms))
    stages = {
        "encode": delta.get("stage:encode", 0.0),
        "search": delta.get("stage:search", 0.0) - delta.get("stage:refine", 0.0),
        "rerank": delta.get("stage:refine", 0.0) + delta.get("stage:rerank", 0.0),
    }
    stages["http_and_other"] = total - sum(stages.values())
    looked_up = delta.get("hits", 0.0) + delta.get("misses", 0.0)
    return loaded, {
        "server_cpu_ms_per_query": round(total * 1000 / n, 3),
        "cpu_split_ms_per_query": {k: round(v * 1000 / n, 3) for k, v in stages.items()},
        "cache_hit_rate": round(delta.get("hits", 0.0) / looked_up, 4) if looked_up else None,
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
