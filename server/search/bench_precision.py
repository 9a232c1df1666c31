"""Query text tower precisions against float32 (``fedsearch bench-precision``).

For the configured query tower (the base encoder's, or the distilled student with
``encoder.query_model``) at float32, bfloat16 and int8 weights in torch, and under
``search.query_runtime`` "numpy" or "onnx" at that runtime's precisions too: the cosine of
each query's vector to its float32 vector, the top-10 overlap with float32's answers over
the catalog's item vectors, title->photo R@10 and type P@10 on the base encoder's validation
items (as ``fedsearch distill`` reports them for a student), the median time per query of
encodes alone and in batches of ``BATCH`` (precisions interleaved, so a burst of load on a
shared machine hits them alike), how far a query's vector alone is from its vector in a
batch, and the text tower's size. Queries are built from catalog attributes and titles; no
precision is trained on them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from common.config import Config, config_from_dict
from common.data.fashion import load_fashion_catalog
from common.model.encoder import Encoder
from common.model.int8 import module_bytes
from common.model.precision import BATCH, CANDIDATES, TextTower, at_precision, timed_encodes
from server.search.base_encoder import encoder_from_config
from server.search.catalog_build import (
    catalog_text_queries,
    encode_catalog_items,
    fashion_items,
)
from server.search.query_model import query_text_tower
from server.search.threads import apply_thread_settings
from server.search.vector_index import RECALL_K, ann_recall_at_k, exact_top_k
from server.training.distill_eval import downstream, validation_items


def text_tower_mb(tower: TextTower) -> float:
    """Megabytes of the tower's text weights (a base encoder's vision tower left out)."""
    if isinstance(tower, Encoder):
        visual = module_bytes(tower.model.visual) if hasattr(tower.model, "visual") else 0
        return (module_bytes(tower.model) - visual) / 1e6
    return int(tower.size_bytes) / 1e6  # type: ignore[attr-defined]


def run_precision_bench(
    config: Config, *, queries: int = 1000, timed: int = 100, rounds: int = 3
) -> dict[str, Any]:
    """The figures for each precision; printed as a table and returned."""
    if queries < timed or timed < 1 or rounds < 1:
        raise ValueError("need queries >= timed >= 1 and rounds >= 1")
    apply_thread_settings(config.search)
    encoder = encoder_from_config(config)
    torch_float32 = {"query_precision": "float32", "query_runtime": "torch"}  # to convert
    float32 = config_from_dict({"search": torch_float32}, config)
    tower, _ = query_text_tower(float32, encoder)
    items = fashion_items(config)
    item_vectors = encode_catalog_items(config, encoder, items, progress=False)
    texts = catalog_text_queries(items, queries)
    towers = {name: at_precision(tower, name) for name in CANDIDATES}
    runtime = config.search.query_runtime
    if runtime != "torch":  # the runtime's precisions beside torch's
        own = config_from_dict({"search": {"query_precision": "float32"}}, config)
        other, _ = query_text_tower(own, encoder)
        towers |= {f"{runtime} {p}": at_precision(other, p) for p in other.precisions}
    vectors = {name: t.encode_text(texts) for name, t in towers.items()}
    val = validation_items(config, load_fashion_catalog(config.paths.fashion)[0])
    keys = np.arange(len(items), dtype=np.int64)
    top = {name: exact_top_k(item_vectors, keys, v, RECALL_K) for name, v in vectors.items()}
    times, alone = timed_encodes(towers, texts[:timed], rounds=rounds)
    rows = {}
    for name, t in towers.items():
        cos = np.sum(vectors[name] * vectors["float32"], axis=1)
        rows[name] = {
            "cos_mean": round(float(cos.mean()), 6),
            "cos_min": round(float(cos.min()), 6),
            "top10_overlap": round(ann_recall_at_k(top[name], top["float32"]), 4),
            **{k: round(v, 4) for k, v in downstream(config, encoder, t.encode_text, val).items()},
            "ms_per_query": round(float(np.median(times[name]["alone"])) * 1000, 3),
            "ms_per_query_batched": round(float(np.median(times[name]["batch"])) * 1000, 3),
            "alone_vs_batch_max_abs": float(np.abs(alone[name] - vectors[name][:timed]).max()),
            "size_mb": round(text_tower_mb(t), 1),
        }
    figures = {
        "query_model": tower.version,
        "queries": len(texts),
        "items": len(items),
        "validation_items": len(val),
        "load_average": os.getloadavg()[0],
        "precisions": rows,
    }
    print_precision_table(figures)
    return figures


def print_precision_table(figures: dict[str, Any]) -> None:
    print(
        f"{figures['query_model']}: {figures['queries']} queries, {figures['items']} items "
        f"({figures['validation_items']} validation items), load average "
        f"{figures['load_average']:.1f}"
    )
    print(
        "| precision | cos mean | cos min | top-10 overlap | title->photo R@10 | type P@10 "
        f"| ms/query alone | in batches of {BATCH} | alone vs batch max diff | text tower MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in figures["precisions"].items():
        print(
            f"| {name} | {r['cos_mean']:.5f} | {r['cos_min']:.5f} | {r['top10_overlap']:.3f} "
            f"| {r['title->photo R@10']:.4f} | {r['type P@10']:.4f} "
            f"| {r['ms_per_query']:.2f} | {r['ms_per_query_batched']:.2f} "
            f"| {r['alone_vs_batch_max_abs']:.1e} | {r['size_mb']:.1f} |"
        )
