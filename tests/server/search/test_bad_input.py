"""The issue's bad-input table: one test per row. Each gets a 4xx JSON error naming the
field; afterwards the service still answers and nothing already indexed is lost."""

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.server.search.conftest import ADMIN_HEADERS

MAX_TEXT, MAX_IMAGE = 100, 20_000


@pytest.fixture
def client(make_app):
    app, _ = make_app(max_text_chars=MAX_TEXT, max_image_bytes=MAX_IMAGE, max_k=50)
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        baseline = c.post("/search", json={"text": "black watch", "k": 10}).json()["results"]
        yield c
        # the service is still up and every indexed item is still there and found
        assert c.get("/healthz").json() == {"status": "ok", "model_version": "base", "items": 50}
        after = c.post("/search", json={"text": "black watch", "k": 10}).json()["results"]
        assert after == baseline


def expect_error(response, status, field):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["field"] == field, body
    assert body["error"]["message"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_empty_query(client):
    expect_error(client.post("/search", json={"k": 5}), 422, "text")
    expect_error(client.post("/search", json={"text": "   "}), 422, "text")


def test_text_over_the_size_limit(client):
    expect_error(client.post("/search", json={"text": "a" * (MAX_TEXT + 1)}), 413, "text")


def test_image_not_valid_base64(client):
    expect_error(client.post("/search", json={"image": "not*base64!"}), 422, "image")


def test_bytes_that_are_not_an_image(client):
    r = client.post("/search", json={"image": b64(b"just some text, not a picture")})
    expect_error(r, 422, "image")
    r = client.post("/search", files={"image": ("x.jpg", b"\x00\x01garbage", "image/jpeg")})
    expect_error(r, 422, "image")


def test_image_over_the_size_limit(client):
    buf = io.BytesIO()
    Image.frombytes("L", (400, 400), bytes(range(256)) * 625).save(buf, format="BMP")
    big = buf.getvalue()
    assert len(big) > MAX_IMAGE
    expect_error(client.post("/search", json={"image": b64(big)}), 413, "image")
    r = client.post("/search", files={"image": ("big.bmp", big, "image/bmp")})
    expect_error(r, 413, "image")


@pytest.mark.parametrize("k", [0, -3, 51])
def test_k_not_positive_or_over_the_maximum(client, k):
    expect_error(client.post("/search", json={"text": "watch", "k": k}), 422, "k")


@pytest.mark.parametrize(
    "vector", [[0.1] * 3, [0.1] * 385, [float("nan")] * 384, [float("inf")] + [0.0] * 383]
)
def test_user_vector_wrong_length_or_not_finite(client, vector):
    body = json.dumps({"text": "watch", "user_vector": vector})  # json allows NaN/Infinity
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    expect_error(r, 422, "user_vector")
    assert "0.1" not in r.text  # the private vector is never echoed


def test_unknown_filter_key(client):
    r = client.post("/search", json={"text": "watch", "filters": {"colour": "red"}})
    expect_error(r, 422, "filters.colour")


def test_price_range_with_min_over_max(client):
    r = client.post(
        "/search", json={"text": "watch", "filters": {"price_min": 50, "price_max": 10}}
    )
    expect_error(r, 422, "filters.price_min")


def test_malformed_json(client):
    r = client.post(
        "/search", content=b'{"text": "watch",', headers={"content-type": "application/json"}
    )
    expect_error(r, 400, "body")
    r = client.post("/items", content=b"[1, 2", headers={"content-type": "application/json"})
    expect_error(r, 400, "body")


def test_upsert_item_with_no_title_and_no_photo(client):
    r = client.post("/items", json={"items": [{"id": "ok", "title": "fine"}, {"id": "empty"}]})
    expect_error(r, 422, "items[1]")
    assert client.get("/items/ok").status_code == 404  # the whole batch was refused


def test_delete_of_an_unknown_id(client):
    expect_error(client.delete("/items/no-such-item"), 404, "id")
