"""How close a distilled query encoder is to its teacher, and what it costs.

- agreement on held-out phrases: cosine to the teacher's vector, and top-10 overlap (the
  share of the teacher's top 10 catalog items that the student's top 10 also holds), over
  the fashion items (fused vectors, as indexed) and over the retail items (titles);
- downstream on the validation items of the base encoder's pretraining (its manifest's
  ``val_ids``; a seeded 15% without one): title -> photo R@10 and category type-P@10 with
  the teacher's and the student's query vectors against the same (teacher) item vectors;
- size (MB of parameters) and single-query encode time, teacher and student measured in
  alternating rounds on the same thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.config import Config
from common.data.records import Product
from common.model.encoder import Encoder
from common.model.fusion import fuse
from common.model.student import QueryStudent
from common.security.versions import latest_version, read_manifest
from server.training.encoder_eval import category_precision, category_queries, title_to_photo
from server.training.pretrain import split_items

TOP_K = 10
SPEED_QUERIES = 100


@dataclass(frozen=True)
class DistillData:
    train: list[str]
    heldout: list[str]
    train_vectors: np.ndarray
    heldout_vectors: np.ndarray
    fashion: list[Product]
    fashion_items: np.ndarray
    retail_items: np.ndarray
    retail_source: str  # the retail product table, or the transactions it was derived from


def top_k_overlap(teacher: np.ndarray, student: np.ndarray, items: np.ndarray, k: int) -> float:
    """Mean share of each query's teacher top-k items that the student's top-k holds."""
    shares: list[float] = []
    for start in range(0, len(teacher), 256):
        t = np.argsort(-(teacher[start : start + 256] @ items.T), axis=1)[:, :k]
        s = np.argsort(-(student[start : start + 256] @ items.T), axis=1)[:, :k]
        shares.extend(len(np.intersect1d(a, b)) / k for a, b in zip(t, s, strict=True))
    return float(np.mean(shares))


def validation_items(config: Config, fashion: list[Product]) -> list[Product]:
    """The base encoder's held-out items (its checkpoint's ``val_ids``), else a seeded 15%."""
    pretrained = config.encoder.pretrained
    folder = latest_version(config.paths.encoders) if pretrained == "latest" else None
    ids = set(read_manifest(folder).get("val_ids", [])) if folder is not None else set()
    chosen = [p for p in fashion if p.id in ids]
    return chosen or split_items(fashion, 0.15, 0)[1]


def downstream(
    config: Config, teacher: Encoder, encode: Callable[[list[str]], np.ndarray], val: list[Product]
) -> dict[str, float]:
    """Title -> photo R@10 and type-P@10 with query texts encoded by ``encode``."""
    photos = teacher.encode_image([p.photo for p in val])
    titles = [p.title for p in val]
    fused = fuse(
        teacher.encode_text(titles),
        photos,
        text_weight=config.encoder.text_weight,
        image_weight=config.encoder.image_weight,
    )
    queries = category_queries(val)
    precision = category_precision(encode([q for q, _, _ in queries]), queries, fused, val)
    return {
        "title->photo R@10": title_to_photo(encode(titles), photos)["R@10"],
        "type P@10": precision["P@10 type"],
    }


def single_query_ms(encoders: dict[str, Callable], texts: Sequence[str]) -> dict[str, float]:
    """Median ms per single-text encode for each encoder, in alternating rounds."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for fn in encoders.values():
        fn(list(texts[:5]))
    for text in texts:
        for name, fn in encoders.items():
            start = time.perf_counter()
            fn([text])
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(float(np.median(t)), 3) for name, t in times.items()}


def evaluate_student(
    config: Config, teacher: Encoder, student: QueryStudent, data: DistillData
) -> dict[str, Any]:
    vectors = student.encode_text(data.heldout)
    cos = (vectors * data.heldout_vectors).sum(1)
    val = validation_items(config, data.fashion)
    tower = teacher.model.text
    speed = single_query_ms(
        {"teacher": teacher.encode_text, "student": student.encode_text},
        data.heldout[:SPEED_QUERIES],
    )
    return {
        "heldout_queries": len(data.heldout),
        "cos_mean": round(float(cos.mean()), 4),
        "cos_min": round(float(cos.min()), 4),
        "top10_overlap_fashion": round(
            top_k_overlap(data.heldout_vectors, vectors, data.fashion_items, TOP_K), 4
        ),
        "top10_overlap_retail": round(
            top_k_overlap(data.heldout_vectors, vectors, data.retail_items, TOP_K), 4
        ),
        "validation_items": len(val),
        "teacher": downstream(config, teacher, teacher.encode_text, val),
        "student": downstream(config, teacher, student.encode_text, val),
        "size_mb": {
            "teacher": round(sum(p.numel() * 4 for p in tower.parameters()) / 1e6, 1),
            "student": round(student.size_bytes / 1e6, 1),
        },
        "ms_per_query": speed,
    }


def report_table(m: dict[str, Any]) -> str:
    """The figures as printed by ``fedsearch distill``."""
    t, s = m["teacher"], m["student"]
    lines = [
        f"\nagreement on {m['heldout_queries']:,} held-out phrases: cos mean {m['cos_mean']:.4f}"
        f" (min {m['cos_min']:.4f}); top-10 overlap with the teacher "
        f"{m['top10_overlap_fashion']:.4f} (fashion items), {m['top10_overlap_retail']:.4f} "
        "(retail items)",
        f"on {m['validation_items']} validation items:",
        f"{'':<10}{'title->photo R@10':>19}{'type P@10':>11}{'size MB':>9}{'ms/query':>10}",
    ]
    for name, row in (("teacher", t), ("student", s)):
        lines.append(
            f"{name:<10}{row['title->photo R@10']:>19.4f}{row['type P@10']:>11.4f}"
            f"{m['size_mb'][name]:>9.1f}{m['ms_per_query'][name]:>10.3f}"
        )
    return "\n".join(lines)
