"""The personalized search service: FastAPI over the search engine.

``create_app(config)`` builds everything (encoder, catalog store + FAISS index, current
adapter version, registry watcher); tests and the benchmark pass their own encoder and
catalog. Endpoints: ``POST /search`` (JSON or multipart), ``GET/POST/DELETE /items``,
``GET /healthz``, ``/version``, ``/metrics`` (Prometheus), ``/shoppers``, ``POST
/admin/reload``, the web page at ``/`` and the OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.config import Config
from common.model.encoder import Encoder
from common.security.signing import load_public_key
from server.search.api import (
    SYNTHETIC_PRICE_NOTE,
    ApiError,
    ErrorResponse,
    Limits,
    SearchResponse,
    UpsertBody,
    decode_base64_image,
    form_to_data,
    image_suffix,
    item_json,
    open_image,
    openapi_search_body,
    parse_json_object,
    result_json,
    to_query,
    validation_error,
)
from server.search.catalog import Catalog, Item
from server.search.catalog_build import encoder_from_config, open_or_build_catalog
from server.search.engine import SearchEngine
from server.search.metrics import MetricsMiddleware, ServiceMetrics
from server.search.model_state import ModelWatcher
from server.search.query_model import describe_query_path, query_encoder_from_config
from server.search.shoppers import shoppers_for
from server.search.spoken import SpokenQueries, transcript_json, with_transcript

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422)}


class SearchService:
    """Everything one running service holds; ``app.state.service``."""

    def __init__(self, config: Config, encoder: Encoder, catalog: Catalog) -> None:
        if catalog.dim != encoder.dim:
            raise ValueError(f"catalog vectors are {catalog.dim}-d, encoder {encoder.dim}-d")
        if catalog.encoder_version != encoder.version:
            raise ValueError(
                f"catalog indexed with encoder {catalog.encoder_version!r}, "
                f"serving {encoder.version!r}: rebuild it with `fedsearch index`"
            )
        self.config = config
        self.encoder = encoder
        self.catalog = catalog
        self.engine = SearchEngine(
            query_encoder_from_config(config, encoder),
            catalog,
            candidates=config.search.candidates,
        )
        public_key = (
            load_public_key(Path(config.search.public_key)) if config.search.public_key else None
        )
        self.watcher = ModelWatcher(
            config.paths.registry,
            encoder.dim,
            on_swap=self.engine.swap_model,
            public_key=public_key,
            poll_interval_s=config.search.poll_interval_s,
        )
        weights = config.encoder.text_weight + config.encoder.image_weight
        self.limits = Limits(encoder.dim, config.search, config.encoder.text_weight / weights)
        self.metrics = ServiceMetrics(self.engine, encoder.version)
        self.speech = SpokenQueries(config.speech, catalog.items())
        self.started_at = time.time()

    def close(self) -> None:
        self.watcher.stop()
        self.engine.query_encoder.close()
        self.catalog.close()


def create_app(
    config: Config,
    *,
    encoder: Encoder | None = None,
    catalog: Catalog | None = None,
    watch_registry: bool = True,
) -> FastAPI:
    """The service app. Builds the encoder and catalog from ``config`` unless given."""
    if encoder is None:
        encoder = encoder_from_config(config)
    if catalog is None:
        catalog = open_or_build_catalog(config, encoder)
    service = SearchService(config, encoder, catalog)
    service.watcher.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if watch_registry:
            service.watcher.start()
        yield
        service.close()

    app = FastAPI(
        title="fedsearch",
        version="1",
        description="Personalized multimodal product search. " + SYNTHETIC_PRICE_NOTE,
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app)
    _add_search_routes(app, service)
    _add_item_routes(app, service)
    _add_ops_routes(app, service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"][1:]) or "body"
        return JSONResponse(ApiError(422, field, err["msg"]).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "path" if exc.status_code in (404, 405) else "body"
        body = ApiError(exc.status_code, field, str(exc.detail)).body()
        return JSONResponse(body, status_code=exc.status_code)


def _check_admin(service: SearchService, authorization: str | None) -> None:
    token = service.config.search.admin_token
    if token and authorization != f"Bearer {token}":
        raise ApiError(401, "authorization", "admin token required (Authorization: Bearer ...)")


async def _read_search_request(request: Request, service: SearchService):
    """(fields, photo bytes, audio bytes): a multipart ``audio`` part is the spoken query,
    any other file part the photo."""
    cfg = service.config.search
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cfg.max_request_bytes:
        raise ApiError(413, "body", f"request body over {cfg.max_request_bytes} bytes")
    content_type = request.headers.get("content-type", "application/json")
    if content_type.startswith("multipart/form-data"):
        part_limit = max(cfg.max_image_bytes, service.config.speech.max_bytes)
        form = await request.form(max_files=2, max_fields=16, max_part_size=part_limit)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        uploads = {k: v for k, v in form.items() if isinstance(v, UploadFile)}
        audio = uploads.pop("audio", None)
        image = None
        if uploads:
            image = await next(iter(uploads.values())).read(cfg.max_image_bytes + 1)
            if len(image) > cfg.max_image_bytes:
                raise ApiError(413, "image", f"image over {cfg.max_image_bytes} bytes")
        audio_bytes = None if audio is None else await audio.read(part_limit + 1)
        return form_to_data(fields), image, audio_bytes
    if content_type.startswith("application/json"):
        return parse_json_object(await request.body(), cfg.max_request_bytes), None, None
    raise ApiError(415, "content-type", "use application/json or multipart/form-data")


def _add_search_routes(app: FastAPI, service: SearchService) -> None:
    @app.post(
        "/search",
        response_model=SearchResponse,
        responses=ERRORS,
        openapi_extra={"requestBody": openapi_search_body()},
        summary="Search by text, photo, speech, or several; optionally personalized",
    )
    async def search(request: Request) -> JSONResponse:
        """Text, image, or both (``text_weight``); a spoken query as a multipart ``audio``
        part (WAV), alone or with them; ``k``; filters on category and price range; an
        optional private ``user_vector`` reranks the top ``search.candidates`` (never stored
        or logged); ``return_vectors`` for on-device reranking and logging.
        """
        start = time.perf_counter()
        data, image, audio = await _read_search_request(request, service)
        heard = None
        if audio is not None:
            heard = await run_in_threadpool(service.speech.transcribe, audio)
            data = with_transcript(data, heard, image is not None)
        query = to_query(data, image, service.limits)
        result = await run_in_threadpool(service.engine.search, query)
        body = result_json(result, query, service.encoder.version)
        if heard is not None:
            body.update(transcript_json(heard))
        body["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return JSONResponse(body)

    @app.get("/shoppers", summary="Simulated shoppers (names and user vectors) for the page")
    def shoppers() -> dict[str, Any]:
        cfg = service.config
        source, people = shoppers_for(
            cfg.paths.work, cfg.search.shoppers_file, service.catalog, service.encoder.dim
        )
        return {"source": source, "shoppers": people}

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(WEB_PAGE, media_type="text/html")


def _add_item_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/items/{item_id}", responses=ERRORS, summary="One catalog item")
    def get_item(item_id: str) -> dict[str, Any]:
        item = service.catalog.get(item_id)
        if item is None:
            raise ApiError(404, "id", f"no item {item_id!r}")
        return {**item_json(item), "attributes": item.attributes}

    @app.get("/items/{item_id}/photo", responses=ERRORS, summary="An item's photo")
    def get_photo(item_id: str) -> Response:
        item = service.catalog.get(item_id)
        if item is None or item.photo is None or not Path(item.photo).is_file():
            raise ApiError(404, "id", f"no photo for item {item_id!r}")
        return FileResponse(item.photo, headers={"Cache-Control": "max-age=3600"})

    @app.post("/items", responses=ERRORS, summary="Upsert a batch of items (title and/or photo)")
    async def upsert_items(request: Request, authorization: str | None = Header(None)) -> dict:
        """Each item is encoded (title + photo fused as in the index) and indexed; an item
        with an existing id is replaced. Durable before the response (journaled, fsynced)."""
        _check_admin(service, authorization)
        data = parse_json_object(await request.body(), service.config.search.max_request_bytes)
        try:
            body = UpsertBody.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return await run_in_threadpool(_upsert, service, body)

    @app.delete("/items/{item_id}", responses=ERRORS, summary="Delete an item")
    def delete_item(item_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        _check_admin(service, authorization)
        try:
            service.catalog.delete([item_id])
        except KeyError:
            raise ApiError(404, "id", f"no item {item_id!r}") from None
        service.speech.items_changed(deleted=[item_id])
        return {"deleted": item_id, "items": len(service.catalog)}


def _upsert(service: SearchService, body: UpsertBody) -> dict[str, Any]:
    cfg = service.config.search
    if len(body.items) > cfg.max_upsert_items:
        raise ApiError(413, "items", f"at most {cfg.max_upsert_items} items per call")
    ids = [it.id for it in body.items]
    for i, item_id in enumerate(ids):
        if item_id in ids[:i]:
            raise ApiError(422, f"items[{i}].id", f"{item_id!r} appears twice")
    titles, photos, raw = [], [], []
    for i, it in enumerate(body.items):
        title = (it.title or "").strip() or None
        if title is not None and len(title) > cfg.max_text_chars:
            raise ApiError(413, f"items[{i}].title", f"over {cfg.max_text_chars} characters")
        data = None
        if it.image is not None:
            data = decode_base64_image(it.image, f"items[{i}].image", cfg.max_image_bytes)
        if title is None and data is None:
            raise ApiError(422, f"items[{i}]", "an item needs a title, a photo, or both")
        titles.append(title)
        photos.append(
            None if data is None else open_image(data, f"items[{i}].image", cfg.max_image_bytes)
        )
        raw.append(data)
    enc = service.config.encoder
    vectors = service.encoder.encode_items(
        titles,
        photos,
        text_weight=enc.text_weight,
        image_weight=enc.image_weight,
    )
    items = [
        Item(
            id=it.id,
            title=titles[i] or "",
            category=it.category,
            price=it.price,
            photo=None
            if raw[i] is None
            else service.catalog.save_photo(raw[i], image_suffix(raw[i])),
            attributes=it.attributes,
        )
        for i, it in enumerate(body.items)
    ]
    service.catalog.upsert(items, vectors)
    service.speech.items_changed(upserted=items)
    return {"upserted": ids, "items": len(service.catalog)}


def _add_ops_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, Any]:
        state = service.engine.state
        return {"status": "ok", "model_version": state.model.version, "items": len(state.catalog)}

    @app.get("/version", summary="Model, encoder and index versions")
    def version() -> dict[str, Any]:
        state = service.engine.state
        index = state.catalog.index
        return {
            "model": state.model.describe(),
            "encoder_version": service.encoder.version,
            "query_precision": service.engine.query_encoder.text_tower.text_precision,
            "query": describe_query_path(service.engine.query_encoder),
            "index": {**asdict(index.info), "backend": index.backend, "items": index.ntotal},
            "catalog": {"items": len(state.catalog), "store": str(state.catalog.folder)},
            "registry": {
                "path": str(service.watcher.versions.root),
                "signatures_checked": service.watcher.versions.public_key is not None,
                "last_error": service.watcher.versions.last_error,
            },
            "speech": service.speech.describe(),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        body, content_type = service.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.post("/admin/reload", responses=ERRORS, summary="Check the registry for a new version now")
    def reload(authorization: str | None = Header(None)) -> dict[str, Any]:
        _check_admin(service, authorization)
        result = service.watcher.check()
        return {"swapped": result.swapped, "model_version": result.version, "error": result.error}


__all__ = ["SearchService", "create_app"]
