"""The search service's query path, built from the configuration: which text tower encodes
query texts (the base encoder's or a distilled student, ``encoder.query_model``), at which
precision (``search.query_precision``, "auto" measured at start-up), and the query cache."""

from __future__ import annotations

import logging
from typing import Any

from common.config import Config
from common.model.encoder import Encoder
from common.model.errors import EncoderError
from common.model.precision import PrecisionChoice, TextTower, resolve_precision
from common.model.student import load_query_student, query_model_folder
from server.search.query_cache import QueryVectorCache
from server.search.query_encoder import QueryEncoder

log = logging.getLogger(__name__)


def query_text_tower(config: Config, encoder: Encoder) -> tuple[TextTower, PrecisionChoice]:
    """The configured query text tower at its precision, and why that precision."""
    tower: TextTower = encoder
    if config.encoder.query_model:
        student = load_query_student(
            query_model_folder(config.encoder.query_model, config.paths.work)
        )
        if student.dim != encoder.dim:
            raise EncoderError(
                f"encoder.query_model: the student's vectors are {student.dim}-d, the base "
                f"encoder's {encoder.dim}-d"
            )
        tower = student
    tower, choice = resolve_precision(tower, config.search.query_precision)
    log.info("query texts: %s in %s (%s)", tower.version, choice.precision, choice.reason)
    return tower, choice


def query_encoder_from_config(config: Config, encoder: Encoder) -> QueryEncoder:
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
        "precision": tower.text_precision,
        "precision_reason": choice.reason if choice else "set by the caller",
        "precision_ms_per_query": choice.ms_per_query if choice else {},
        "cache": None
        if cache is None
        else {"capacity": cache.capacity, "entries": len(cache), "hit_rate": cache.hit_rate},
    }
