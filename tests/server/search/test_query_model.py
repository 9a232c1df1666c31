"""The service's query path: the text tower chosen by config, its precision, the cache."""

import numpy as np
from fastapi.testclient import TestClient

from common.config import config_from_dict
from common.model.student import QUERY_MODEL_DIR, save_student, student_from_teacher
from common.security.versions import write_version
from server.search.catalog_build import create_catalog
from server.search.model_state import ModelState
from server.search.service import create_app
from tests.server.search.test_service import scrape


def test_repeated_queries_hit_the_cache_and_a_swap_clears_it(make_app, untrained_encoder):
    app, _ = make_app(query_precision="float32")
    with TestClient(app) as c:
        first = c.post("/search", json={"text": "black watch", "return_vectors": True}).json()
        again = c.post("/search", json={"text": "  Black   WATCH ", "return_vectors": True}).json()
        metrics = scrape(c)
        query = c.get("/version").json()["query"]
        engine = app.state.service.engine
        assert len(engine.query_encoder.cache) == 1
        engine.swap_model(ModelState(version="v0009"))
        assert len(engine.query_encoder.cache) == 0
    assert first["query_vector"] == again["query_vector"]
    assert [r["id"] for r in first["results"]] == [r["id"] for r in again["results"]]
    reference = untrained_encoder.encode_text(["black watch"])[0]
    np.testing.assert_allclose(first["query_vector"], reference, atol=1e-6)
    assert metrics[("fedsearch_query_cache_hits_total", ())] == 1
    assert metrics[("fedsearch_query_cache_misses_total", ())] == 1
    assert metrics[("fedsearch_query_cache_hit_ratio", ())] == 0.5
    stages = {
        dict(k[1])["stage"]: v for k, v in metrics.items() if k[0].startswith("fedsearch_stage")
    }
    assert set(stages) == {"encode", "search", "rerank", "refine"} and stages["encode"] > 0
    assert query["text_model"] == untrained_encoder.version and query["precision"] == "float32"
    assert query["precision_reason"] == "set by configuration"
    assert query["cache"]["capacity"] == 10000


def test_a_distilled_student_encodes_the_queries(
    tmp_path, untrained_encoder, search_items, search_vectors
):
    work = tmp_path / "work"
    tower = student_from_teacher(untrained_encoder.model.text.transformer, [0, 5], 256)
    folder = write_version(work / QUERY_MODEL_DIR, lambda f: save_student(f, tower), {})
    config = config_from_dict(
        {
            "paths": {"work_dir": str(work)},
            "encoder": {"pretrained": "none", "query_model": "latest"},
            "search": {"query_cache_size": 0},
        }
    )
    catalog = create_catalog(config, search_items, search_vectors, untrained_encoder.version)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    with TestClient(app) as c:
        body = c.post("/search", json={"text": "black watch", "return_vectors": True}).json()
        query = c.get("/version").json()["query"]
    assert query["text_model"].startswith(f"query-student:{folder.name}:")
    assert query["cache"] is None and "measured" in query["precision_reason"]
    assert set(query["precision_ms_per_query"]) == {"float32", "bfloat16", "int8"}
    student = app.state.service.engine.query_encoder.text_tower
    np.testing.assert_allclose(
        body["query_vector"], student.encode_text(["black watch"])[0], atol=1e-6
    )
