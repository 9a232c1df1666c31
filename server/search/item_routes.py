"""Catalog item endpoints: ``GET /items/{id}`` and its photo, ``POST /items`` (upsert, admin
token), ``DELETE /items/{id}`` (admin token).

An upsert's body is read under the streaming size limit, parsed and validated, its photos
decoded and the items encoded off the event loop (``decode_workers`` at a time); the batch
is committed to the store before the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from common.config import Config
from server.search.api import (
    ErrorResponse,
    UpsertBody,
    decode_base64_image,
    image_suffix,
    item_json,
    openapi_json_body,
    parse_json_object,
    validation_error,
)
from server.search.api_errors import ApiError
from server.search.auth import AdminAuth
from server.search.base_encoder import BaseEncoder
from server.search.catalog import Catalog, Item, PhotoUpload
from server.search.images import PhotoWorkers, open_image
from server.search.spoken import SpokenQueries


class _Service(Protocol):
    """What these routes use of ``server.search.service.SearchService``."""

    config: Config
    encoder: BaseEncoder
    catalog: Catalog
    admin: AdminAuth
    photo_workers: PhotoWorkers
    speech: SpokenQueries


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422)
}
BEARER = HTTPBearer(auto_error=False, description="the admin token (search.admin_token)")


def admin_guard(service: _Service) -> Any:
    """A route dependency: 401 unless ``Authorization: Bearer <admin token>``; declares the
    bearer scheme in the OpenAPI."""

    def check(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        service.admin.check(request.headers.get("authorization"))

    return Depends(check)


def add_item_routes(app: FastAPI, service: _Service) -> None:
    admin = admin_guard(service)

    @app.get("/items/{item_id}", responses=ERRORS, summary="One catalog item")
    def get_item(item_id: str) -> dict[str, Any]:
        item = service.catalog.get(item_id)
        if item is None:
            raise ApiError(404, "id", f"no item {item_id!r}")
        return {**item_json(item), "attributes": item.attributes}

    @app.get(
        "/items/{item_id}/photo",
        responses={**ERRORS, 200: {"content": {"image/*": {}}, "description": "the photo"}},
        response_class=Response,
        summary="An item's photo",
    )
    def get_photo(item_id: str) -> Response:
        item = service.catalog.get(item_id)
        if item is None or item.photo is None or not Path(item.photo).is_file():
            raise ApiError(404, "id", f"no photo for item {item_id!r}")
        return FileResponse(item.photo, headers={"Cache-Control": "max-age=3600"})

    @app.post(
        "/items",
        responses=ERRORS,
        dependencies=[admin],
        openapi_extra={"requestBody": openapi_json_body(UpsertBody)},
        summary="Upsert a batch of items (title and/or photo)",
    )
    async def upsert_items(request: Request) -> dict[str, Any]:
        """Each item is encoded (title + photo fused as in the index) and indexed; an item
        with an existing id is replaced. Committed to the store's database before the
        answer. Needs the admin token."""
        cfg = service.config.search
        raw = await request.body()
        data = await anyio.to_thread.run_sync(
            parse_json_object, raw, cfg.max_request_bytes, cfg.max_json_depth
        )
        try:
            body = UpsertBody.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return await service.photo_workers.run(_upsert, service, body)

    @app.delete(
        "/items/{item_id}", responses=ERRORS, dependencies=[admin], summary="Delete an item"
    )
    def delete_item(item_id: str) -> dict[str, Any]:
        """Removes the item, and its photo if it was uploaded and no other item has it.
        Needs the admin token."""
        try:
            deleted = service.catalog.delete([item_id])
        except KeyError:
            raise ApiError(404, "id", f"no item {item_id!r}") from None
        service.speech.items_changed(removed=deleted)
        return {"deleted": item_id, "items": len(service.catalog)}


def _upsert(service: _Service, body: UpsertBody) -> dict[str, Any]:
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
            None
            if data is None
            else open_image(data, f"items[{i}].image", cfg.max_image_bytes, cfg.max_image_pixels)
        )
        raw.append(data)
    enc = service.config.encoder
    vectors = service.encoder.encode_items(
        titles, photos, text_weight=enc.text_weight, image_weight=enc.image_weight
    )
    items = [
        Item(
            id=it.id,
            title=titles[i] or "",
            category=it.category,
            price=it.price,
            attributes=it.attributes,
        )
        for i, it in enumerate(body.items)
    ]
    uploads = [None if data is None else PhotoUpload(data, image_suffix(data)) for data in raw]
    replaced = service.catalog.upsert(items, vectors, uploads)
    service.speech.items_changed(upserted=items, removed=replaced)
    return {"upserted": ids, "items": len(service.catalog)}
