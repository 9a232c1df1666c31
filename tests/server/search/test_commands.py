import copy
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

import server.search.catalog_build
from common.cli import main
from common.config import config_from_dict
from server.search.bench import _codes, perturbed_copies, process_cpu_s, run_load
from server.search.catalog import Item
from server.search.catalog_build import (
    catalog_text_queries,
    open_catalog,
    open_or_build_catalog,
    synthetic_price,
)


@pytest.fixture
def config(tmp_path, small_catalog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fashion_product_images_small_subset").symlink_to(small_catalog)
    return config_from_dict(
        {
            "paths": {"data_dir": str(data), "work_dir": str(tmp_path / "work")},
            "encoder": {"pretrained": "none"},
        }
    )


@pytest.fixture
def shared_encoder(monkeypatch, untrained_encoder):
    """Commands build their encoder with ``create_encoder``: hand them the session's."""
    monkeypatch.setattr(
        server.search.catalog_build, "create_encoder", lambda *a, **k: untrained_encoder
    )
    return untrained_encoder


def test_index_command_builds_the_store(config, shared_encoder, capsys):
    code = main(
        ["index", "--limit", "25", "--set", f"paths.data_dir={config.paths.data}",
         "--set", f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "indexed 25 items" in out and "exact index on faiss-cpu" in out
    catalog = open_catalog(config)
    assert len(catalog) == 25 and catalog.encoder_version == shared_encoder.version
    catalog.close()


def test_bad_command_arguments_are_one_line_errors(capsys):
    assert main(["bench-search", "--kinds", "exact,hnsw"]) == 2
    assert "--kinds: unknown kind 'hnsw'" in capsys.readouterr().err
    assert main(["index", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_serve_path_builds_a_missing_store_and_reencodes_for_a_new_encoder(config, shared_encoder):
    from server.search.service import create_app

    app = create_app(config, watch_registry=False)  # no store yet: index the catalog
    with TestClient(app) as c:
        assert c.get("/healthz").json()["items"] == 40
        c.post("/items", json={"items": [{"id": "mine", "title": "Hand Made Clay Mug"}]})
    other = copy.copy(shared_encoder)
    other.version = "fedsearch-minilm-rn64:v0002:abc"
    catalog = open_or_build_catalog(config, other)  # a new encoder: re-encode, keep upserts
    assert catalog.encoder_version == other.version and len(catalog) == 41
    assert catalog.get("mine").title == "Hand Made Clay Mug"
    catalog.close()


def test_synthetic_prices_are_deterministic_and_in_range():
    prices = [synthetic_price(str(i)) for i in range(2000)]
    assert prices == [synthetic_price(str(i)) for i in range(2000)]
    assert 5 <= min(prices) and max(prices) < 251 and len(set(prices)) > 100
    assert all(round(p % 1, 2) == 0.99 for p in prices)


def test_bench_copies_form_clusters_around_the_originals():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = perturbed_copies(x, 300)
    assert out.shape == (300, 64)
    np.testing.assert_array_equal(out[:30], x)
    cos = np.sum(out[30:] * x[np.arange(270) % 30], axis=1)
    assert 0.7 < cos.min() and cos.max() < 0.99 and 0.86 < cos.mean() < 0.96
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_bench_queries_and_load_over_http(make_app, serve_app, search_items):
    queries = catalog_text_queries(search_items, 40)
    assert len(queries) == len(set(queries)) == 40
    assert all(q == q.lower() and q.strip() for q in queries)
    app, _ = make_app()
    with serve_app(app) as url:
        load = run_load(url, queries, clients=3, requests=30, k=5)
    assert load["failures"] == [] and len(load["latencies_ms"]) == 30
    assert all(len(ids) == 5 for ids in load["answers"].values())
    code = {"a": 0, "b": 1, "c": 2}
    assert _codes(["b", "a"], code, 3) == [1, 0, -1]


BUSY_CHILD = """
import time
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
print("busy done", flush=True)
time.sleep(60)
"""


def test_bench_reads_another_process_cpu_time():
    child = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "busy done"
        assert 0.5 <= process_cpu_s(child.pid) < 10
    finally:
        child.kill()
        child.wait()


def test_item_json_roundtrip_keeps_every_field():
    item = Item(id="x", title="t", category="c", price=1.5, photo="/p.jpg", attributes={"a": "b"})
    assert Item(**item.to_json()) == item


def test_search_command_prints_shoppers_side_by_side(config, shared_encoder, capsys):
    from server.search.shoppers import write_shoppers

    rng = np.random.default_rng(3)
    people = [{"name": n, "vector": rng.standard_normal(384)} for n in ("ana", "bo", "cy")]
    write_shoppers(config.paths.work / "sim-run" / "shoppers.json", people)
    args = ["--set", f"paths.data_dir={config.paths.data}", "--set",
            f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none"]  # fmt: skip
    assert (
        main(["search", "black watch", "-k", "5", "--shopper", "cy", "--shopper", "ana", *args])
        == 0
    )
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("not personalized"))
    assert header.split() == ["not", "personalized", "cy", "ana"]
    ranked = [line for line in out.splitlines() if line.lstrip().startswith("5.")]
    assert len(ranked) == 1 and ranked[0].count("5.") == 3
    assert main(["search", "black watch", "--shopper", "nobody", *args]) == 2
    assert "unknown shopper" in capsys.readouterr().err


def test_search_command_hears_a_spoken_query(config, shared_encoder, speak, tmp_path, capsys):
    query = tmp_path / "query.wav"
    query.write_bytes(speak("black watches"))
    args = ["--set", f"paths.data_dir={config.paths.data}", "--set",
            f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none"]  # fmt: skip
    assert main(["search", "--audio", str(query), "-k", "3", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith('heard "black watches" (confidence 0.')
    assert 'query "black watches", model version base' in out
    assert main(["search", "men", "--audio", str(query), "-k", "3", *args]) == 0
    assert 'query "men black watches"' in capsys.readouterr().out

    query.write_bytes(b"RIFF....WAVEjunk")
    assert main(["search", "--audio", str(query), *args]) == 2
    assert "search: error: --audio: damaged WAV header: no fmt chunk" in capsys.readouterr().err
    assert main(["search", "--audio", str(tmp_path / "absent.wav"), *args]) == 2
    assert "--audio: cannot read" in capsys.readouterr().err
    assert main(["search", *args]) == 2
    assert "text: give 1 to 512 characters, or --audio" in capsys.readouterr().err
