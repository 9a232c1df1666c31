"""The search service's query path, built from the configuration: which text tower encodes
query texts (the base encoder's or a distilled student, ``encoder.query_model``), in which
runtime (``search.query_runtime``: torch, or NumPy or ONNX Runtime without torch), at which
precision (``search.query_precision``, "auto" measured at start-up), and the query cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.config import Config
from common.model.errors import EncoderError
from common.model.precision import PrecisionChoice, TextTower, resolve_precision
from common.model.student_files import query_model_folder
from server.search.base_encoder import BaseEncoder, built
from server.search.query_cache import QueryVectorCache
from server.search.query_encoder import QueryEncoder

log = logging.getLogger(__name__)


def query_text_tower(config: Config, encoder: BaseEncoder) -> tuple[TextTower, PrecisionChoice]:
    """The configured query text tower at its precision, and why that precision."""
    if config.search.query_runtime == "numpy":
        return _numpy_student(config, encoder.dim)
    tower: TextTower
    if config.search.query_runtime == "onnx":
        from common.model.student_onnx import load_onnx_student

        tower = load_onnx_student(_student_folder(config), threads=config.search.torch_threads)
        _check_dim(tower, encoder.dim)
    elif config.encoder.query_model:
        from common.model.student import load_query_student

        tower = load_query_student(
            query_model_folder(config.encoder.query_model, config.paths.work)
        )
        _check_dim(tower, encoder.dim)
    else:
        tower = built(encoder)
    tower, choice = resolve_precision(tower, config.search.query_precision)
    log.info("query texts: %s in %s (%s)", tower.version, choice.precision, choice.reason)
    return tower, choice


def _numpy_student(config: Config, dim: int) -> tuple[TextTower, PrecisionChoice]:
    from common.model.student_numpy import load_numpy_student

    student = load_numpy_student(_student_folder(config))
    _check_dim(student, dim)
    choice = PrecisionChoice("float32", "the numpy query runtime computes in float32")
    log.info("query texts: %s in NumPy, float32", student.version)
    return student, choice


def _student_folder(config: Config) -> Path:
    """The student's version folder, which the numpy and onnx runtimes require."""
    runtime = config.search.query_runtime
    if not config.encoder.query_model:
        raise EncoderError(
            f'search.query_runtime = "{runtime}" encodes queries with a student: set '
            'encoder.query_model ("latest" after `fedsearch distill`, or a version folder; '
            "`fedsearch distill --steps 0 --layers 0,1,2,3,4,5 --ffn 1536` copies the base "
            "encoder's own text tower)"
        )
    return query_model_folder(config.encoder.query_model, config.paths.work)


def _check_dim(student: Any, dim: int) -> None:
    if student.dim != dim:
        raise EncoderError(
            f"encoder.query_model: the student's vectors are {student.dim}-d, the base "
            f"encoder's {dim}-d"
        )


def query_encoder_from_config(config: Config, encoder: BaseEncoder) -> QueryEncoder:
    tower, choice = query_text_tower(config, encoder)
    size = config.search.query_cache_size
    return QueryEncoder(
        tower,
        encoder,
        max_batch=config.search.max_batch,
        cache=QueryVectorCache(size) if size else None,
        precision=choice,
    )


def describe_query_path(query_encoder: QueryEncoder) -> dict[str, Any]:
    """What ``/version`` says about query encoding."""
    tower, cache = query_encoder.text_tower, query_encoder.cache
    choice = query_encoder.precision_choice
    return {
        "text_model": tower.version,
        "runtime": getattr(tower, "runtime", "torch"),
        "precision": tower.text_precision,
        "precision_reason": choice.reason if choice else "set by the caller",
        "precision_ms_per_query": choice.ms_per_query if choice else {},
        "cache": None
        if cache is None
        else {"capacity": cache.capacity, "entries": len(cache), "hit_rate": cache.hit_rate},
    }
