"""Hot swap of the adapter version: verified, built aside, swapped in one step."""

import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.security.signing import generate_signing_key, load_private_key, signer
from common.security.versions import write_version
from server.search.query_model import query_text_tower

QUERY = {"text": "black watch", "k": 5}


def random_adapter(seed: int, dim: int = 384) -> QueryAdapter:
    torch.manual_seed(seed)
    adapter = QueryAdapter(dim, rank=8)
    with torch.no_grad():
        adapter.up.weight.normal_(0, 0.5)
    return adapter.eval()


def publish(registry, adapter, finalize=None):
    return write_version(
        registry,
        lambda folder: adapter.save(folder / ADAPTER_FILE),
        {"kind": "query-adapter", "round": 1},
        finalize=finalize,
    )


def expected_scores(query_vector, item_vectors, adapter=None):
    q = query_vector if adapter is None else adapter.apply_numpy(query_vector[None])[0]
    return np.sort(item_vectors @ q)[::-1][:5]


def test_publish_under_load_zero_failures_and_one_version_per_response(
    make_app, serve_app, untrained_encoder, search_vectors
):
    app, config = make_app(watch_registry=True)
    adapter = random_adapter(1)
    q = query_text_tower(config, untrained_encoder)[0].encode_text([QUERY["text"]])[0]
    expected = {
        "base": expected_scores(q, search_vectors),
        "v0001": expected_scores(q, search_vectors, adapter),
    }
    assert not np.allclose(expected["base"], expected["v0001"], atol=1e-3)
    responses: dict[int, list] = {i: [] for i in range(6)}
    stop = threading.Event()

    def shopper(i: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/search", json=QUERY)
                    responses[i].append((r.status_code, r.json()))
                except httpx.HTTPError as exc:
                    responses[i].append((0, repr(exc)))

    with serve_app(app) as url:
        threads = [threading.Thread(target=shopper, args=(i, url)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        publish(config.paths.registry, adapter)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            seen = [r[1].get("model_version") for rs in responses.values() for r in rs[-3:]]
            if seen and all(v == "v0001" for v in seen):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()

    everything = [r for rs in responses.values() for r in rs]
    assert len(everything) > 20
    assert [r for r in everything if r[0] != 200] == []
    versions = {body["model_version"] for _, body in everything}
    assert versions == {"base", "v0001"}
    for _, body in everything:  # every answer is wholly the version it names
        scores = [hit["score"] for hit in body["results"]]
        np.testing.assert_allclose(scores, expected[body["model_version"]], atol=1e-4)
    for rs in responses.values():  # never back to the old version once swapped
        names = [body["model_version"] for _, body in rs]
        if "v0001" in names:
            assert "base" not in names[names.index("v0001") :]


def served_version_metric(client) -> str:
    families = text_string_to_metric_families(client.get("/metrics").text)
    (sample,) = [s for f in families if f.name == "fedsearch_model_info" for s in f.samples]
    return sample.labels["version"]


def test_admin_reload_swaps_now_and_refuses_a_tampered_version(make_app):
    app, config = make_app()
    registry = config.paths.registry
    with TestClient(app) as c:
        assert c.post("/admin/reload").json() == {
            "swapped": False, "model_version": "base", "error": None
        }  # fmt: skip
        publish(registry, random_adapter(1))
        assert c.post("/admin/reload").json()["swapped"] is True
        assert c.get("/version").json()["model"]["version"] == "v0001"
        assert served_version_metric(c) == "v0001"
        bad = publish(registry, random_adapter(2))
        with (bad / ADAPTER_FILE).open("r+b") as fh:  # flip bytes after publishing
            fh.seek(200)
            fh.write(b"\x00\x01\x02\x03")
        result = c.post("/admin/reload").json()
        assert result["swapped"] is False and "v0002" in result["error"]
        assert c.post("/search", json=QUERY).json()["model_version"] == "v0001"
        assert served_version_metric(c) == "v0001"
        assert "v0002" in c.get("/version").json()["registry"]["last_error"]


def test_an_adapter_of_the_wrong_size_is_refused(make_app):
    app, config = make_app()
    publish(config.paths.registry, random_adapter(1, dim=16))
    with TestClient(app) as c:
        result = c.post("/admin/reload").json()
        assert result["swapped"] is False and "dim" in result["error"]
        assert c.get("/healthz").json()["model_version"] == "base"


@pytest.fixture
def keys(tmp_path):
    generate_signing_key(tmp_path / "sign.key", tmp_path / "sign.pub")
    return load_private_key(tmp_path / "sign.key"), tmp_path / "sign.pub"


def test_with_a_public_key_only_signed_versions_are_served(make_app, keys):
    private, public = keys
    app, config = make_app(public_key=str(public))
    with TestClient(app) as c:
        publish(config.paths.registry, random_adapter(1))  # unsigned
        result = c.post("/admin/reload").json()
        assert result["swapped"] is False and "not signed" in result["error"]
        assert c.get("/version").json()["registry"]["signatures_checked"] is True
        publish(config.paths.registry, random_adapter(2), finalize=signer(private))
        assert c.post("/admin/reload").json() == {
            "swapped": True, "model_version": "v0002", "error": None
        }  # fmt: skip


def test_the_service_starts_on_the_latest_published_version(make_app, tmp_path):
    publish(tmp_path / "work" / "registry", random_adapter(1))
    app, _ = make_app()
    with TestClient(app) as c:
        assert c.get("/healthz").json()["model_version"] == "v0001"
