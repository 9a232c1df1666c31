"""Request and response schemas of the search service, and turning requests into queries.

Every bad input becomes an ``ApiError`` (``server.search.api_errors``): an HTTP 4xx whose
JSON body names the field, ``{"error": {"field": "k", "message": "..."}}``. Limits come
from ``SearchConfig``. Numbers are strict: ``"k": true`` is refused, not read as 1.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from common.config import SearchConfig
from server.search.api_errors import ApiError
from server.search.catalog import Filters, Item
from server.search.engine import Query, SearchResult
from server.search.images import open_image
from server.search.limits import json_depth_exceeds

ID_PATTERN = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$"  # no "." or ".." (photo URLs)
MAX_PRICE = 1e9
MAX_ATTRIBUTES, MAX_ATTRIBUTE_CHARS = 64, 256
SYNTHETIC_PRICE_NOTE = (
    "The bundled fashion catalog has no prices: its items carry a deterministic synthetic "
    "demo price (log-uniform 5-250, from the item id) flagged `price_synthetic: true`, so "
    "the price filter can be shown. Items upserted with a `price` keep theirs; a price "
    "bound excludes items without a price."
)


# -- schemas (validation and OpenAPI docs) ------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFilters(_Strict):
    category: StrictStr | list[StrictStr] | None = Field(
        None, description="one category or a list (case-insensitive, e.g. 'Watches')"
    )
    price_min: StrictFloat | None = Field(None, allow_inf_nan=False, description="inclusive")
    price_max: StrictFloat | None = Field(None, allow_inf_nan=False, description="inclusive")


class SearchBody(_Strict):
    text: StrictStr | None = Field(None, description="query text")
    image: StrictStr | None = Field(
        None, description="query photo, base64 (a data: URL is accepted)"
    )
    text_weight: StrictFloat | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="text share when both are given"
    )
    k: StrictInt | None = Field(None, description="number of results (1..search.max_k)")
    filters: SearchFilters | None = None
    user_vector: list[StrictFloat] | None = Field(
        None,
        description="the shopper's private user vector for server-side reranking of the top "
        "search.candidates; used for this request only, never stored or logged",
    )
    personalization_weight: StrictFloat | None = Field(
        None, ge=0, le=10, allow_inf_nan=False, description="beta in base + beta * cos(user, item)"
    )
    return_vectors: StrictBool = Field(
        False, description="include the base query vector and each result's item vector"
    )


class UpsertItem(_Strict):
    id: StrictStr = Field(pattern=ID_PATTERN, description="letters, digits, . _ : @ -")
    title: StrictStr | None = Field(None, description="at most search.max_text_chars")
    image: StrictStr | None = Field(None, description="photo, base64")
    category: StrictStr = Field("", max_length=100)
    price: StrictFloat | None = Field(None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    attributes: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description=f"at most {MAX_ATTRIBUTES}, names and values of {MAX_ATTRIBUTE_CHARS} "
        "characters at most",
    )

    @field_validator("attributes")
    @classmethod
    def _short_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if len(name) > MAX_ATTRIBUTE_CHARS or len(text) > MAX_ATTRIBUTE_CHARS:
                raise ValueError(f"attribute {name[:40]!r}: over {MAX_ATTRIBUTE_CHARS} characters")
        return value


class UpsertBody(_Strict):
    items: list[UpsertItem] = Field(min_length=1)


class ResultItem(BaseModel):
    id: str
    title: str
    category: str
    price: float | None
    price_synthetic: bool
    score: float = Field(description="final score (with personalization when asked)")
    base_score: float = Field(description="cosine of the adapted query and the item")
    photo_url: str | None
    vector: list[float] | None = None


class SearchResponse(BaseModel):
    results: list[ResultItem]
    model_version: str
    encoder_version: str
    personalized: bool
    candidates: int
    took_ms: float
    query_vector: list[float] | None = None
    transcript: str | None = Field(None, description="the words heard, for a spoken query")
    transcript_confidence: float | None = Field(
        None, description="the recognizer's posterior probability of those words, if it gives one"
    )


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- parsing -------------------------------------------------------------------------------


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as an ``ApiError`` naming its field (dotted, ``a[0].b``)."""
    err = exc.errors()[0]
    field = prefix
    for part in err["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return ApiError(422, field or "body", message)


def parse_json_object(body: bytes, max_bytes: int, max_depth: int = 32) -> dict[str, Any]:
    """A JSON object of at most ``max_bytes`` nested at most ``max_depth`` levels deep."""
    if len(body) > max_bytes:
        raise ApiError(413, "body", f"request body over {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "body", f"malformed JSON: {exc}") from None
    except RecursionError:
        data = None
    if data is None or json_depth_exceeds(data, max_depth):
        raise ApiError(400, "body", f"JSON nested over {max_depth} levels")
    if not isinstance(data, dict):
        raise ApiError(422, "body", "expected a JSON object")
    return data


def decode_base64_image(text: str, field: str, max_bytes: int) -> bytes:
    text = re.sub(r"^data:[\w/+.-]+;base64,", "", text.strip())
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ApiError(413, field, f"image over {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, field, "not valid base64") from None


def image_suffix(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return f".{(img.format or 'bin').lower()}"


@dataclass(frozen=True)
class Limits:
    dim: int
    config: SearchConfig
    text_weight: float


def to_query(data: dict[str, Any], image_bytes: bytes | None, limits: Limits) -> Query:
    """Validate a search request (JSON fields, optional uploaded photo) into a ``Query``."""
    cfg = limits.config
    try:
        body = SearchBody.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    text = (body.text or "").strip() or None
    if text is not None and len(text) > cfg.max_text_chars:
        raise ApiError(413, "text", f"over {cfg.max_text_chars} characters")
    if body.image is not None and image_bytes is not None:
        raise ApiError(422, "image", "give the image either as base64 or as an upload")
    if body.image is not None:
        image_bytes = decode_base64_image(body.image, "image", cfg.max_image_bytes)
    image = (
        None
        if image_bytes is None
        else open_image(image_bytes, "image", cfg.max_image_bytes, cfg.max_image_pixels)
    )
    if text is None and image is None:
        raise ApiError(422, "text", "empty query: give text, an image, or both")
    k = cfg.default_k if body.k is None else body.k
    if not 1 <= k <= cfg.max_k:
        raise ApiError(422, "k", f"must be between 1 and {cfg.max_k}, got {k}")
    return Query(
        text=text,
        image=image,
        text_weight=limits.text_weight if body.text_weight is None else body.text_weight,
        k=k,
        filters=_filters(body.filters),
        user_vector=_user_vector(body.user_vector, limits.dim),
        personalization_weight=(
            cfg.personalization_weight
            if body.personalization_weight is None
            else body.personalization_weight
        ),
        return_vectors=body.return_vectors,
    )


def _filters(f: SearchFilters | None) -> Filters | None:
    if f is None:
        return None
    if f.price_min is not None and f.price_max is not None and f.price_min > f.price_max:
        raise ApiError(
            422, "filters.price_min", f"price_min {f.price_min} > price_max {f.price_max}"
        )
    categories = (f.category,) if isinstance(f.category, str) else tuple(f.category or ())
    return Filters(categories=categories, price_min=f.price_min, price_max=f.price_max)


def _user_vector(values: list[float] | None, dim: int) -> np.ndarray | None:
    """Checked without echoing any value: the vector is private."""
    if values is None:
        return None
    if len(values) != dim:
        raise ApiError(422, "user_vector", f"expected {dim} numbers, got {len(values)}")
    vector = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(vector)):
        raise ApiError(422, "user_vector", "contains NaN or infinity")
    return vector


def form_to_data(form: dict[str, str], max_depth: int = 32) -> dict[str, Any]:
    """Multipart text fields -> the JSON request's fields (numbers, filters and
    user_vector written as JSON)."""
    data: dict[str, Any] = dict(form)
    kinds = {"filters": dict, "user_vector": list}
    for name in ("k", "text_weight", "personalization_weight", "filters", "user_vector"):
        if name in data:
            try:
                data[name] = json.loads(data[name])
            except (json.JSONDecodeError, RecursionError):
                raise ApiError(422, name, "not valid JSON") from None
            if json_depth_exceeds(data[name], max_depth):
                raise ApiError(422, name, f"JSON nested over {max_depth} levels")
            if name in kinds and not isinstance(data[name], kinds[name]):
                raise ApiError(422, name, f"expected a JSON {kinds[name].__name__}")
    if "return_vectors" in data:
        flag = data["return_vectors"].lower()
        if flag not in _FORM_BOOLEANS:
            raise ApiError(422, "return_vectors", "expected true or false")
        data["return_vectors"] = _FORM_BOOLEANS[flag]
    return data


_FORM_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True} | {
    "false": False, "0": False, "no": False, "off": False
}  # fmt: skip


def item_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "title": item.title,
        "category": item.category,
        "price": item.price,
        "price_synthetic": item.price_synthetic,
        "photo_url": f"/items/{item.id}/photo" if item.photo else None,
    }


def result_json(result: SearchResult, query: Query, encoder_version: str) -> dict[str, Any]:
    results = []
    for hit in result.hits:
        entry = {**item_json(hit.item), "score": hit.score, "base_score": hit.base_score}
        if query.return_vectors:
            entry["vector"] = hit.vector.tolist()
            entry["attributes"] = dict(hit.item.attributes)
        results.append(entry)
    out: dict[str, Any] = {
        "results": results,
        "model_version": result.model_version,
        "encoder_version": encoder_version,
        "personalized": result.personalized,
        "candidates": result.candidates,
        "took_ms": round(result.took_ms, 3),
    }
    if query.return_vectors:
        out["query_vector"] = result.base_query.tolist()
    return out


def openapi_json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A JSON request body of ``model``'s schema for the docs (routes that parse their
    body themselves, to bound it, declare it this way)."""
    schema = _inline_refs(model.model_json_schema())
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_search_body() -> dict[str, Any]:
    """The /search request body for the docs: JSON, or multipart with a photo upload."""
    form = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "audio": {
                "type": "string",
                "format": "binary",
                "description": "spoken query: WAV, 16-bit PCM, mono or stereo",
            },
            "text": {"type": "string"},
            "text_weight": {"type": "number"},
            "k": {"type": "integer"},
            "filters": {"type": "string", "description": "JSON object, as in the JSON body"},
            "user_vector": {"type": "string", "description": "JSON list of numbers"},
            "personalization_weight": {"type": "number"},
            "return_vectors": {"type": "boolean"},
        },
    }
    return {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(SearchBody.model_json_schema())},
            "multipart/form-data": {"schema": form},
        },
    }


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
