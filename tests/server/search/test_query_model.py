"""The service's query path: the text tower chosen by config, its precision, the cache."""

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.config import ConfigError, config_from_dict
from common.model.errors import EncoderError
from common.model.student import save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.security.versions import write_version
from server.search.catalog_build import create_catalog
from server.search.model_state import ModelState
from server.search.query_cache import QueryVectorCache
from server.search.query_encoder import QueryEncoder
from server.search.query_model import query_text_tower
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


NUMPY_SERVICE = """
import base64, json, sys
from fastapi.testclient import TestClient
from common.config import config_from_dict
from server.search.service import create_app
from server.search.threads import apply_thread_settings

config = config_from_dict(json.loads(sys.argv[1]))
apply_thread_settings(config.search)
app = create_app(config, watch_registry=False)
out = {}
with TestClient(app) as c:
    text = c.post("/search", json={"text": "black watch", "return_vectors": True}).json()
    out["text"] = text
    out["query"] = c.get("/version").json()["query"]
    out["torch_after_text"] = "torch" in sys.modules
    photo = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
    out["photo"] = c.post("/search", json={"image": photo, "return_vectors": True}).json()
    out["torch_after_photo"] = "torch" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.parametrize("runtime", ["numpy", "onnx"])
def test_a_torch_free_runtime_serves_text_without_torch_and_builds_it_for_photos(
    runtime, tmp_path, untrained_encoder, search_items, search_vectors
):
    search = {"query_cache_size": 0, "query_precision": "float32"}
    settings = _with_a_student(tmp_path, untrained_encoder, search)
    torch_config = config_from_dict(settings)
    create_catalog(torch_config, search_items, search_vectors, untrained_encoder.version).close()
    app = create_app(torch_config, encoder=untrained_encoder, watch_registry=False)
    photo = next(it.photo for it in search_items if it.photo)
    with TestClient(app) as c:
        reference = c.post("/search", json={"text": "black watch", "return_vectors": True}).json()
        with open(photo, "rb") as fh:
            image = base64.b64encode(fh.read()).decode()
        by_photo = c.post("/search", json={"image": image, "return_vectors": True}).json()
    settings["search"]["query_runtime"] = runtime
    run = subprocess.run(
        [sys.executable, "-c", NUMPY_SERVICE, json.dumps(settings), photo],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["query"]["runtime"] == runtime and out["query"]["precision"] == "float32"
    assert out["query"]["text_model"] == app.state.service.engine.query_encoder.text_tower.version
    assert not out["torch_after_text"] and out["torch_after_photo"]
    assert [r["id"] for r in out["text"]["results"]] == [r["id"] for r in reference["results"]]
    np.testing.assert_allclose(out["text"]["query_vector"], reference["query_vector"], atol=2e-6)
    # "none" gives each process its own random vision tower: the photo query is served by
    # the base encoder built on demand, not comparable with this process's
    assert len(out["photo"]["results"]) == len(by_photo["results"]) == 10
    assert abs(np.linalg.norm(out["photo"]["query_vector"]) - 1) < 1e-5


@pytest.mark.parametrize("runtime", ["numpy", "onnx"])
def test_a_torch_free_runtime_needs_a_student(runtime, untrained_encoder):
    config = config_from_dict(
        {"encoder": {"pretrained": "none"}, "search": {"query_runtime": runtime}}
    )
    with pytest.raises(EncoderError, match="encoder.query_model.*distill --steps 0"):
        query_text_tower(config, untrained_encoder)


@pytest.mark.parametrize(
    ("runtime", "refused", "accepted"),
    [("numpy", ["int8", "bfloat16"], ["float32"]), ("onnx", ["bfloat16"], ["float32", "int8"])],
)
def test_each_runtime_takes_its_own_precisions(runtime, refused, accepted):
    for precision in refused:
        with pytest.raises(ConfigError, match=f"search.query_precision: the {runtime} query"):
            config_from_dict({"search": {"query_runtime": runtime, "query_precision": precision}})
    for precision in [*accepted, "auto"]:
        search = {"query_runtime": runtime, "query_precision": precision}
        assert config_from_dict({"search": search}).search.query_precision == precision


def _with_a_student(tmp_path, untrained_encoder, search: dict) -> dict:
    """Settings serving a 2-layer student written under ``tmp_path``, with ``search``."""
    work = tmp_path / "work"
    tower = student_from_teacher(untrained_encoder.model.text.transformer, [0, 5], 256)
    write_version(work / QUERY_MODEL_DIR, lambda f: save_student(f, tower), {})
    return {
        "paths": {"work_dir": str(work)},
        "encoder": {"pretrained": "none", "query_model": "latest"},
        "search": search,
    }


def test_the_onnx_runtime_in_int8_measures_only_its_own_precisions(tmp_path, untrained_encoder):
    settings = _with_a_student(tmp_path, untrained_encoder, {"query_runtime": "onnx"})
    pinned = {**settings, "search": {"query_runtime": "onnx", "query_precision": "int8"}}
    int8, choice = query_text_tower(config_from_dict(pinned), untrained_encoder)
    assert int8.text_precision == "int8" and choice.reason == "set by configuration"
    auto, choice = query_text_tower(config_from_dict(settings), untrained_encoder)
    assert set(choice.ms_per_query) == {"float32", "int8"}  # no bfloat16 in ONNX Runtime
    assert auto.text_precision == choice.precision and auto.runtime == "onnx"
    encoder = QueryEncoder(int8, untrained_encoder, cache=QueryVectorCache(4))
    try:  # MiniLM's tokens ignore case, so the cache does too
        assert encoder.cache_key("Black  SHOES") == encoder.cache_key("black shoes")
    finally:
        encoder.close()
