"""The personalized search service: FastAPI over the search engine.

``create_app(config)`` builds everything (encoder, catalog store + FAISS index, current
adapter version, registry watcher, admin token); tests and the benchmark pass their own
encoder and catalog. Endpoints: ``POST /search`` (JSON or multipart), ``GET/POST/DELETE
/items`` (``server.search.item_routes``), ``GET /healthz``, ``/version``, ``/metrics``
(Prometheus), ``/shoppers`` (demo mode only), ``POST /admin/reload`` and
``/admin/rollback``, the web page at ``/`` and the OpenAPI docs at ``/docs``. Every
request body is bounded while it arrives (``server.search.limits``); parsing, photo
decoding and encoding run off the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError
from python_multipart.exceptions import FormParserError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.config import Config
from common.model.errors import EncoderError
from common.security.signing import load_public_key
from server.search.api import (
    SYNTHETIC_PRICE_NOTE,
    ApiError,
    ErrorResponse,
    Limits,
    SearchResponse,
    form_to_data,
    openapi_json_body,
    openapi_search_body,
    parse_json_object,
    result_json,
    to_query,
    validation_error,
)
from server.search.auth import AdminAuth
from server.search.base_encoder import BaseEncoder, base_encoder
from server.search.catalog import Catalog
from server.search.catalog_build import open_or_build_catalog
from server.search.engine import SearchEngine
from server.search.images import PhotoWorkers
from server.search.item_routes import ERRORS, add_item_routes, admin_guard
from server.search.limits import BodyLimitMiddleware
from server.search.metrics import MetricsMiddleware, ServiceMetrics
from server.search.model_routes import add_model_routes
from server.search.model_state import ModelWatcher
from server.search.query_model import describe_query_path, query_encoder_from_config
from server.search.shoppers import shoppers_for
from server.search.spoken import SpokenQueries, transcript_json, with_transcript
from server.search.threads import faiss_thread_setup

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
VERSION_MARK_FILE = "served_version.json"  # in the store: the high-water mark of versions
DECODE_WORKERS = 2  # photos decoded at once (each up to search.max_image_pixels)
SMALL_BODY_BYTES = 64 * 1024  # the body limit of routes other than /search and POST /items
INLINE_JSON_BYTES = 64 * 1024  # JSON bodies up to this are parsed on the event loop
_LARGE_BODY_ROUTES = {("POST", "/search"), ("POST", "/items")}


class SearchService:
    """Everything one running service holds; ``app.state.service``."""

    def __init__(
        self,
        config: Config,
        encoder: BaseEncoder,
        catalog: Catalog,
        admin: AdminAuth | None = None,
    ) -> None:
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
        self.admin = admin or AdminAuth(digest=None)  # None: admin endpoints closed
        self.photo_workers = PhotoWorkers(DECODE_WORKERS)
        self.engine = SearchEngine(
            query_encoder_from_config(config, encoder),
            catalog,
            candidates=config.search.candidates,
            max_batch=config.search.max_batch,
            thread_setup=faiss_thread_setup(config.search),
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
            state_file=catalog.folder / VERSION_MARK_FILE,
            base_model=encoder.version,
        )
        weights = config.encoder.text_weight + config.encoder.image_weight
        self.limits = Limits(encoder.dim, config.search, config.encoder.text_weight / weights)
        self.metrics = ServiceMetrics(self.engine, encoder.version)
        self.speech = SpokenQueries(config.speech, catalog.iter_items())
        self.started_at = time.time()

    def close(self) -> None:
        self.watcher.stop()
        self.engine.close()
        self.photo_workers.close()
        self.catalog.close()


def settle_start_up_heap() -> None:
    """Move every object alive after start-up (models, tokenizers, the catalog's tables) out
    of the garbage collector's sight: its full collections then walk only what requests
    created, instead of pausing a request while it walks the start-up heap. Measured with
    `fedsearch bench-search` (ivf-sq8, ONNX int8, 8 clients, 2026-12-07): p99 18.7 and 19.5
    ms with it, 26.4 and 25.4 without, in alternating runs. Then hand the heap that building
    the models freed back to the system (glibc keeps it otherwise: 160 MiB of an ONNX int8
    query model's 430, measured)."""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to hand back this way
        pass


def create_app(
    config: Config,
    *,
    encoder: BaseEncoder | None = None,
    catalog: Catalog | None = None,
    watch_registry: bool = True,
    admin: AdminAuth | None = None,
) -> FastAPI:
    """The service app. Builds the encoder (deferred under the numpy query runtime:
    ``server.search.base_encoder``) and catalog from ``config`` unless given; the
    admin token is the configured one (``server.search.auth``) unless ``admin`` is."""
    if encoder is None:
        encoder = base_encoder(config)
    if catalog is None:
        catalog = open_or_build_catalog(config, encoder)
    admin = admin or AdminAuth.from_config(config, catalog.folder)
    service = SearchService(config, encoder, catalog, admin)
    service.watcher.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if watch_registry:
            service.watcher.start()
        settle_start_up_heap()
        yield
        gc.unfreeze()  # collectable again once the service stops (tests start many)
        service.close()

    app = FastAPI(
        title="fedsearch",
        version="1",
        description="Personalized multimodal product search. " + SYNTHETIC_PRICE_NOTE,
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda scope: _body_limit(scope, config.search.max_request_bytes),
        body_timeout_s=config.search.body_timeout_s,
    )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app)
    _add_search_routes(app, service)
    add_item_routes(app, service)
    add_model_routes(app, config.paths.registry, lambda: service.watcher.versions.version or "base")
    _add_ops_routes(app, service)
    _add_admin_routes(app, service)
    return app


def _body_limit(scope: dict[str, Any], max_request_bytes: int) -> int:
    large = (scope.get("method"), scope.get("path")) in _LARGE_BODY_ROUTES
    return max_request_bytes if large else SMALL_BODY_BYTES


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

    @app.exception_handler(EncoderError)
    async def encoder_unavailable(request: Request, exc: EncoderError) -> JSONResponse:
        log.error("base encoder unavailable on %s %s: %s", request.method, request.url.path, exc)
        message = "the base encoder is unavailable (photos and item upserts need it); logged"
        return JSONResponse(ApiError(503, "server", message).body(), status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        body = ApiError(500, "server", "internal error (logged on the server)").body()
        return JSONResponse(body, status_code=500)


async def _read_search_request(request: Request, service: SearchService):
    """(fields, photo bytes, audio bytes): a multipart ``audio`` part is the spoken query,
    any other file part the photo."""
    cfg = service.config.search
    content_type = request.headers.get("content-type", "application/json")
    if content_type.startswith("multipart/form-data"):
        part_limit = max(cfg.max_image_bytes, service.config.speech.max_bytes)
        try:
            form = await request.form(max_files=2, max_fields=16, max_part_size=part_limit)
        except FormParserError as exc:
            raise ApiError(400, "body", f"malformed multipart body: {exc}") from None
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        uploads = {k: v for k, v in form.items() if isinstance(v, UploadFile)}
        audio = uploads.pop("audio", None)
        image = None
        if uploads:
            image = await next(iter(uploads.values())).read(cfg.max_image_bytes + 1)
            if len(image) > cfg.max_image_bytes:
                raise ApiError(413, "image", f"image over {cfg.max_image_bytes} bytes")
        audio_bytes = None if audio is None else await audio.read(part_limit + 1)
        return form_to_data(fields, cfg.max_json_depth), image, audio_bytes
    if content_type.startswith("application/json"):
        raw = await request.body()
        if len(raw) <= INLINE_JSON_BYTES:  # parsed in microseconds: no thread hop
            return parse_json_object(raw, cfg.max_request_bytes, cfg.max_json_depth), None, None
        data = await anyio.to_thread.run_sync(
            parse_json_object, raw, cfg.max_request_bytes, cfg.max_json_depth
        )
        return data, None, None
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
        if image is None and data.get("image") is None:  # nothing to decode
            query = to_query(data, None, service.limits)
        else:
            query = await service.photo_workers.run(to_query, data, image, service.limits)
        if query.image is None:  # the pipeline's threads do the work; nothing waits in a thread
            result = await asyncio.wrap_future(service.engine.submit(query))
        else:  # a photo query may build the deferred base encoder first
            result = await run_in_threadpool(service.engine.search, query)
        body = result_json(result, query, service.encoder.version)
        if heard is not None:
            body.update(transcript_json(heard))
        body["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return JSONResponse(body)

    @app.get(
        "/shoppers",
        include_in_schema=service.config.search.demo,
        responses=ERRORS,
        summary="Simulated shoppers (names and user vectors) for the page; demo mode only",
    )
    def shoppers() -> dict[str, Any]:
        cfg = service.config
        if not cfg.search.demo:
            raise ApiError(404, "path", "simulated shoppers are served in demo mode only")
        source, people = shoppers_for(
            cfg.paths.work, cfg.search.shoppers_file, service.catalog, service.encoder.dim
        )
        return {"source": source, "shoppers": people}

    @app.get("/", include_in_schema=False)
    def web_page() -> FileResponse:
        return FileResponse(WEB_PAGE, media_type="text/html")


def _add_ops_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
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
            "catalog": {"items": len(state.catalog)},
            "registry": {
                "signatures_checked": service.watcher.versions.public_key is not None,
                "highest_accepted": service.watcher.versions.mark.highest,
                "pinned": service.watcher.versions.mark.pinned,
                "last_error": service.watcher.versions.last_error,
            },
            "speech": service.speech.describe(),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        body, content_type = service.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)


class RollbackBody(BaseModel):
    version: str = Field(pattern=r"^v[0-9]{4,}$", description="an older published version")


def _add_admin_routes(app: FastAPI, service: SearchService) -> None:
    admin = admin_guard(service)

    @app.post(
        "/admin/reload",
        responses=ERRORS,
        dependencies=[admin],
        summary="Check the registry for a new version now (admin token)",
    )
    def reload() -> dict[str, Any]:
        result = service.watcher.check()
        return {"swapped": result.swapped, "model_version": result.version, "error": result.error}

    @app.post(
        "/admin/rollback",
        responses={**ERRORS, 409: {"model": ErrorResponse}},
        dependencies=[admin],
        openapi_extra={"requestBody": openapi_json_body(RollbackBody)},
        summary="Serve an older version and pin it (admin token; the operator's rollback)",
    )
    async def rollback(request: Request) -> dict[str, Any]:
        cfg = service.config.search
        data = parse_json_object(await request.body(), cfg.max_request_bytes, cfg.max_json_depth)
        try:
            body = RollbackBody.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        error = await run_in_threadpool(service.watcher.rollback, body.version)
        if error is not None:
            raise ApiError(409, "version", error)
        return {"model_version": body.version, "pinned": True}


__all__ = ["SearchService", "create_app"]
