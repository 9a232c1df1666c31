"""Downstream check of a compressed query encoder on a simulated population.

The population is loaded with the base encoder as usual (its item vectors, and the teacher's
float32 query vectors for every search); each held-out search is then ranked twice over the
whole catalog, with the teacher's query vector and with the compressed encoder's vector of
the same query text (no adapter, no personalization: the "base" figures of a simulation
report). The compressed encoder is a distilled student (``encoder.query_model``, default the
latest), or the base encoder itself at ``search.query_precision`` "int8" or "bfloat16" when
no student is named; a student runs at that precision too ("auto": float32), in torch or in
``search.query_runtime`` "numpy" or "onnx".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.config import Config, config_from_dict
from common.evaluation.protocol import evaluate_searches, metrics_from_sums
from common.model.encoder import Encoder
from common.model.precision import TextTower, at_precision
from common.model.student import load_query_student
from common.model.student_files import query_model_folder
from server.search.query_model import query_text_tower
from simulation.loader import build_base_encoder, load_population


def compressed_tower(config: Config, encoder: Encoder) -> TextTower:
    """The query encoder to compare with the base encoder's float32 one (module doc)."""
    precision = config.search.query_precision
    if config.search.query_runtime != "torch":  # a student, whether named or not
        pinned = "float32" if precision == "auto" else precision
        search = {"query_precision": pinned}
        encoder_section = {"query_model": config.encoder.query_model or "latest"}
        own = config_from_dict({"search": search, "encoder": encoder_section}, config)
        return query_text_tower(own, encoder)[0]
    if not config.encoder.query_model and precision in ("int8", "bfloat16"):
        return at_precision(encoder, precision)
    student = load_query_student(
        query_model_folder(config.encoder.query_model or "latest", config.paths.work)
    )
    return student if precision == "auto" else at_precision(student, precision)


def compare_query_models(
    config: Config, population: str, *, num_devices: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Base nDCG@k (and HR@k, MRR) of the held-out searches, teacher vs compressed encoder."""
    encoder = build_base_encoder(config)
    student = compressed_tower(config, encoder)
    loaded = load_population(
        population, config, num_devices=num_devices, encoder=encoder, progress=progress
    )
    tests = [s for device in loaded.devices for s in device.test]
    texts = sorted({s.query for s in tests})
    vectors = dict(zip(texts, student.encode_text(texts), strict=True))
    distilled = [dataclasses.replace(s, query_vector=vectors[s.query]) for s in tests]
    k = config.evaluation.k
    figures = {
        name: metrics_from_sums(evaluate_searches(searches, loaded.item_vectors, k=k), k)
        for name, searches in (("teacher", tests), ("student", distilled))
    }
    key = f"nDCG@{k}"
    return {
        "population": population,
        "devices": len(loaded.devices),
        "searches": len(tests),
        "distinct_queries": len(texts),
        **figures,
        "student_version": f"{student.version} ({student.text_precision})",
        "ndcg_ratio": figures["student"][key] / figures["teacher"][key],
    }


def format_comparison(result: dict[str, Any], k: int = 10) -> str:
    lines = [
        f"{result['population']}: {result['searches']:,} held-out searches of "
        f"{result['devices']:,} devices ({result['distinct_queries']:,} distinct query texts), "
        "ranked over the whole catalog, base (no adapter)",
        f"{'query encoder':<44}{'nDCG@' + str(k):>9}{'HR@' + str(k):>8}{'MRR':>8}",
    ]
    labels = {"teacher": "teacher (base encoder)", "student": result["student_version"]}
    for name in ("teacher", "student"):
        m = result[name]
        lines.append(
            f"{labels[name]:<44}{m[f'nDCG@{k}']:>9.4f}{m[f'HR@{k}']:>8.4f}{m['MRR']:>8.4f}"
        )
    lines.append(f"student / teacher nDCG@{k}: {result['ndcg_ratio']:.4f}")
    return "\n".join(lines)
