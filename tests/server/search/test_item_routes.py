"""Item endpoints: strict field validation, photos removed with their item, and a complete
OpenAPI description (request bodies, the bearer scheme, error responses)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.server.search.conftest import ADMIN_HEADERS


@pytest.fixture
def client(make_app):
    app, _ = make_app()
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        yield c


def png_b64(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"id": "..", "title": "t"}, "items[0].id"),
        ({"id": ".", "title": "t"}, "items[0].id"),
        ({"id": "a/b", "title": "t"}, "items[0].id"),
        ({"id": "x" * 129, "title": "t"}, "items[0].id"),
        ({"id": "p", "title": "t", "price": 1e308}, "items[0].price"),
        ({"id": "p", "title": "t", "price": -1}, "items[0].price"),
        ({"id": "p", "title": "t", "price": True}, "items[0].price"),
        ({"id": "p", "title": "t", "price": "12"}, "items[0].price"),
        ({"id": "a", "title": "t", "attributes": {"k": "v" * 1_000_000}}, "items[0].attributes"),
        ({"id": "a", "title": "t", "attributes": {str(i): "v" for i in range(65)}},
         "items[0].attributes"),
        ({"id": "a", "title": "t", "attributes": {"k": 1}}, "items[0].attributes.k"),
        ({"id": 7, "title": "t"}, "items[0].id"),
        ({"id": "a", "title": True}, "items[0].title"),
    ],
)  # fmt: skip
def test_bad_item_fields_are_refused_naming_the_field(client, item, field):
    r = client.post("/items", json={"items": [item]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_true_is_not_a_number(client):
    r = client.post("/search", json={"text": "watch", "k": True})
    assert r.status_code == 422 and r.json()["error"]["field"] == "k"
    r = client.post("/search", json={"text": "watch", "text_weight": False})
    assert r.status_code == 422 and r.json()["error"]["field"] == "text_weight"


def test_a_deleted_items_photo_is_removed(client):
    items = [{"id": "red", "title": "red", "image": png_b64((200, 0, 0))}]
    assert client.post("/items", json={"items": items}).status_code == 200
    photo = Path(client.app.state.service.catalog.get("red").photo)
    assert photo.is_file() and client.get("/items/red/photo").status_code == 200
    assert client.delete("/items/red").status_code == 200
    assert not photo.exists() and client.get("/items/red/photo").status_code == 404


def test_openapi_declares_bodies_security_and_errors(client):
    spec = client.get("/openapi.json").json()
    upsert = spec["paths"]["/items"]["post"]
    schema = upsert["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["items"] and "attributes" in str(schema)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    guarded = [
        ("/items", "post"),
        ("/items/{item_id}", "delete"),
        ("/admin/reload", "post"),
        ("/admin/rollback", "post"),
    ]
    for path, method in guarded:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], path
        assert {"401", "413", "422"} <= set(operation["responses"]), path
    assert "requestBody" in spec["paths"]["/admin/rollback"]["post"]
    assert "/shoppers" not in spec["paths"]  # demo mode only
    assert client.get("/shoppers").status_code == 404


def test_version_names_no_path(client, tmp_path):
    body = client.get("/version").text
    assert str(tmp_path) not in body and "/tmp" not in body
