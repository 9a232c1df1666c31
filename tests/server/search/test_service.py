import base64
import gc
import io
import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.server.search.conftest import ADMIN_HEADERS


def png_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client(make_app):
    app, _ = make_app(demo=True)
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        yield c


def test_text_search_returns_results_with_version_and_timing(client):
    body = client.post("/search", json={"text": "black watch", "k": 5}).json()
    assert len(body["results"]) == 5
    top = body["results"][0]
    assert {"id", "title", "score", "base_score", "category", "price", "photo_url"} <= set(top)
    assert "Watches" in {r["category"] for r in body["results"][:3]}
    assert body["model_version"] == "base" and body["took_ms"] > 0
    assert body["personalized"] is False
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_start_up_objects_are_frozen_while_serving_and_released_after(make_app):
    app, _ = make_app()
    frozen_before = gc.get_freeze_count()
    with TestClient(app) as c:
        assert gc.get_freeze_count() > frozen_before  # the models, the catalog, the app
        assert c.post("/search", json={"text": "black watch"}).status_code == 200
    assert gc.get_freeze_count() == 0


def test_service_scores_match_the_in_process_pipeline(make_app, untrained_encoder, search_vectors):
    from server.search.query_model import query_text_tower

    app, config = make_app()
    with TestClient(app) as client:
        body = client.post("/search", json={"text": "blue jeans", "k": 3}).json()
    query = query_text_tower(config, untrained_encoder)[0].encode_text(["blue jeans"])[0]
    expected = np.sort(search_vectors @ query)[::-1][:3]
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected, atol=1e-4)


def test_image_search_json_base64_and_multipart_agree(
    client, search_items, search_vectors, untrained_encoder
):
    photo = open(search_items[0].photo, "rb").read()
    as_json = client.post(
        "/search", json={"image": base64.b64encode(photo).decode(), "k": 3}
    ).json()
    as_form = client.post(
        "/search", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"k": "3"}
    ).json()
    query = untrained_encoder.encode_image([photo])[0]
    expected = np.sort(search_vectors @ query)[::-1][:3]
    np.testing.assert_allclose([r["score"] for r in as_json["results"]], expected, atol=1e-4)
    assert [r["id"] for r in as_form["results"]] == [r["id"] for r in as_json["results"]]


def test_text_weight_moves_between_text_and_image(client, search_items):
    photo = base64.b64encode(open(search_items[0].photo, "rb").read()).decode()

    def ids(**body):
        return [r["id"] for r in client.post("/search", json={"k": 5, **body}).json()["results"]]

    both = {"text": "red dress", "image": photo}
    assert ids(**both, text_weight=0.0) == ids(image=photo)
    assert ids(**both, text_weight=1.0) == ids(text="red dress")
    mixed = client.post("/search", json={**both, "text_weight": 0.5, "k": 1}).json()
    text_only = client.post("/search", json={"text": "red dress", "k": 1}).json()
    assert mixed["results"][0]["score"] != pytest.approx(text_only["results"][0]["score"])


def test_filters_on_category_and_price(client):
    body = client.post(
        "/search",
        json={"text": "shirt", "k": 50, "filters": {"category": ["Watches", "tshirts"]}},
    ).json()
    assert body["results"] and {r["category"].lower() for r in body["results"]} <= {
        "watches",
        "tshirts",
    }
    body = client.post(
        "/search", json={"text": "shirt", "k": 50, "filters": {"price_min": 20, "price_max": 60}}
    ).json()
    assert body["results"] and all(20 <= r["price"] <= 60 for r in body["results"])
    assert all(r["price_synthetic"] for r in body["results"])


def test_user_vector_reranks_toward_the_shopper_and_is_not_logged(
    client, search_items, search_vectors, caplog
):
    watches = [i for i, it in enumerate(search_items) if it.category == "Watches"]
    user = search_vectors[watches].mean(axis=0)
    user = (user / np.linalg.norm(user)).tolist()
    plain = client.post("/search", json={"text": "men casual", "k": 5}).json()
    with caplog.at_level(logging.DEBUG):
        personal = client.post(
            "/search",
            json={"text": "men casual", "k": 5, "user_vector": user, "personalization_weight": 2},
        ).json()
    assert personal["personalized"] is True
    share = lambda body: sum(r["category"] == "Watches" for r in body["results"])  # noqa: E731
    assert share(personal) > share(plain)
    for r in personal["results"]:
        assert r["score"] != pytest.approx(r["base_score"])
    assert f"{user[0]:.6f}"[:8] not in caplog.text and "user_vector" not in caplog.text


def test_a_personal_rerank_keeps_what_the_query_names_above_a_liked_item(
    client, search_items, search_vectors
):
    colour = {it.id: it.attributes.get("baseColour") for it in search_items}
    liked = [i for i, it in enumerate(search_items) if colour[it.id] != "Black"]
    user = search_vectors[liked].mean(axis=0)
    user = (user / np.linalg.norm(user)).tolist()
    body = {"text": "black", "k": 5, "user_vector": user, "personalization_weight": 5}
    personal = client.post("/search", json=body).json()
    assert [colour[r["id"]] for r in personal["results"]] == ["Black"] * 5
    assert all(r["score"] != pytest.approx(r["base_score"]) for r in personal["results"])
    # a query that names no facet: the same taste now lifts items of other colours
    free = client.post("/search", json={**body, "text": "something to wear"}).json()
    assert any(colour[r["id"]] != "Black" for r in free["results"])


def test_return_vectors_gives_base_query_and_item_vectors(client, search_items, search_vectors):
    body = client.post("/search", json={"text": "watch", "k": 2, "return_vectors": True}).json()
    assert len(body["query_vector"]) == 384
    ids = [it.id for it in search_items]
    for r in body["results"]:
        np.testing.assert_allclose(r["vector"], search_vectors[ids.index(r["id"])], atol=1e-6)
    plain = client.post("/search", json={"text": "watch", "k": 2}).json()
    assert "query_vector" not in plain and "vector" not in plain["results"][0]


def test_items_get_photo_upsert_delete_and_restart(make_app, search_items):
    app, _ = make_app()
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        first = search_items[0].id
        assert c.get(f"/items/{first}").json()["title"] == search_items[0].title
        photo = c.get(f"/items/{first}/photo")
        assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
        new = {
            "items": [
                {"id": "red-1", "title": "Bright Red Square Poster", "image": _b64(png_bytes()),
                 "category": "Posters", "price": 12.5},
                {"id": "txt-1", "title": "Plain Text Only Item"},
                {"id": "img-1", "image": _b64(png_bytes((10, 200, 10)))},
            ]
        }  # fmt: skip
        r = c.post("/items", json=new)
        assert r.status_code == 200 and r.json()["items"] == 53
        hit = c.post("/search", json={"text": "Bright Red Square Poster", "k": 1}).json()
        assert hit["results"][0]["id"] == "red-1" and hit["results"][0]["price"] == 12.5
        assert c.get("/items/img-1/photo").status_code == 200
        assert c.delete(f"/items/{first}").json() == {"deleted": first, "items": 52}
        gone = c.post("/search", json={"text": search_items[0].title, "k": 50}).json()
        assert first not in {r["id"] for r in gone["results"]}
    app, _ = make_app(reopen=True)  # a restart: the store is read back from disk
    with TestClient(app) as c:
        assert c.get("/healthz").json()["items"] == 52
        assert c.get(f"/items/{first}").status_code == 404
        hit = c.post("/search", json={"text": "Bright Red Square Poster", "k": 1}).json()
        assert hit["results"][0]["id"] == "red-1"
        assert c.get("/version").json()["index"]["items"] == 52


def test_admin_token_protects_changes(make_app):
    app, _ = make_app(admin_token="s3cret")
    with TestClient(app) as c:
        body = {"items": [{"id": "x", "title": "x"}]}
        r = c.post("/items", json=body)
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
        assert c.delete("/items/x").status_code == 401
        ok = c.post("/items", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_health_version_and_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/search", json={"text": "watch"})
    client.post("/search", json={"k": 3})
    version = client.get("/version").json()
    assert version["model"]["version"] == "base"
    assert version["index"]["kind"] == "exact" and version["index"]["backend"] == "faiss-cpu"
    assert version["index"]["recall_at_10"] == 1.0 and version["index"]["items"] == 50
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "user_vector" in content["application/json"]["schema"]["properties"]
    assert {"/items", "/items/{item_id}", "/healthz", "/version", "/metrics"} <= set(spec["paths"])
    assert "synthetic" in spec["info"]["description"]
    assert client.get("/docs").status_code == 200


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def labels(endpoint: str, status: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({"endpoint": endpoint, "method": "POST", "status": status, **extra}.items())
    )


def test_metrics_count_requests_and_describe_what_is_served(client):
    client.post("/search", json={"text": "watch"})
    client.post("/search", json={"k": 3})
    before = scrape(client)
    ok, bad = labels("/search", "200"), labels("/search", "422")
    assert before[("fedsearch_http_requests_total", ok)] == 1
    assert before[("fedsearch_http_requests_total", bad)] == 1
    assert before[("fedsearch_http_request_duration_seconds_count", ok)] == 1
    assert 0 < before[("fedsearch_http_request_duration_seconds_sum", ok)] < 10
    assert (
        before[
            ("fedsearch_http_request_duration_seconds_bucket", labels("/search", "200", le="+Inf"))
        ]
        == 1
    )
    assert before[("fedsearch_index_items", ())] == 50
    assert before[("fedsearch_index_recall_at_10", (("kind", "exact"),))] == 1.0
    (model,) = [k for k in before if k[0] == "fedsearch_model_info"]
    assert dict(model[1])["version"] == "base" and before[model] == 1

    client.post("/search", json={"text": "shoes"})
    client.get("/items/no-such-item")
    after = scrape(client)
    assert after[("fedsearch_http_requests_total", ok)] == 2
    assert after[("fedsearch_http_request_duration_seconds_count", ok)] == 2
    item = (("endpoint", "/items/{item_id}"), ("method", "GET"), ("status", "404"))
    assert after[("fedsearch_http_requests_total", item)] == 1  # route template, not the id


def test_web_page_and_shoppers(client, tmp_path):
    page = client.get("/")
    assert page.status_code == 200 and 'id="shopper-a"' in page.text
    shoppers = client.get("/shoppers").json()
    assert shoppers["source"] == "demo" and len(shoppers["shoppers"]) >= 2
    assert len(shoppers["shoppers"][0]["vector"]) == 384


def test_shoppers_file_of_the_last_run_is_served(make_app, tmp_path):
    from server.search.shoppers import write_shoppers

    rng = np.random.default_rng(0)
    people = [{"name": f"s{i}", "description": "d", "vector": rng.standard_normal(384)}
              for i in range(3)]  # fmt: skip
    write_shoppers(tmp_path / "work" / "run-7" / "shoppers.json", people)
    app, _ = make_app(demo=True)
    with TestClient(app) as c:
        body = c.get("/shoppers").json()
    assert body["source"].endswith("run-7/shoppers.json")
    names = [s["name"] for s in body["shoppers"]]
    built_in = [name for name in names if name.startswith("demo: ")]
    assert built_in and names == [*built_in, "s0", "s1", "s2"]  # built-in tastes come first
    served = {s["name"]: s for s in body["shoppers"]}
    assert np.allclose(served["s1"]["vector"], people[1]["vector"], atol=1e-6)


def test_errors_are_json_even_for_unknown_routes(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.post(
        "/search", content=json.dumps({"text": "x"}), headers={"content-type": "text/csv"}
    )
    assert r.status_code == 415 and r.json()["error"]["field"] == "content-type"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_query_precision_is_served_and_reported(make_app, untrained_encoder, precision):
    app, _ = make_app(query_precision=precision)
    with TestClient(app) as c:
        served = c.get("/version").json()["query_precision"]
        body = c.post("/search", json={"text": "black watch", "return_vectors": True}).json()
    query = np.asarray(body["query_vector"], dtype=np.float32)
    reference = untrained_encoder.encode_text(["black watch"])[0]
    assert served == precision
    if served == "float32":
        np.testing.assert_allclose(query, reference, atol=1e-6)
    else:
        assert not np.array_equal(query, reference) and float(query @ reference) > 0.999
