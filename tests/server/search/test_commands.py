import copy

import numpy as np
import pytest
from fastapi.testclient import TestClient

import common.model.encoder
from common.cli import main
from common.config import config_from_dict
from server.search.catalog import Item
from server.search.catalog_build import open_catalog, open_or_build_catalog, synthetic_price


@pytest.fixture
def config(tmp_path, small_catalog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "fashion_product_images_small_subset").symlink_to(small_catalog)
    return config_from_dict(
        {
            "paths": {"data_dir": str(data), "work_dir": str(tmp_path / "work")},
            "encoder": {"pretrained": "none"},
            "search": {"admin_token": "t"},
        }
    )


@pytest.fixture
def shared_encoder(monkeypatch, untrained_encoder):
    """Commands build their encoder with ``create_encoder``: hand them the session's."""
    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
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


def test_index_command_builds_a_compressed_index(config, shared_encoder, capsys):
    args = ["index", "--kind", "ivf-pq", "--set", f"paths.data_dir={config.paths.data}",
            "--set", f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none",
            "--set", "search.pq_bytes=16"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "indexed 40 items" in out and "ivf-pq index on faiss-cpu" in out
    assert "re-scoring the top 10k" in out and "bytes per item" in out
    catalog = open_catalog(config)
    info = catalog.index.info
    assert f"95% lower bound {info.recall_at_10_low:.4f} on {info.recall_queries}" in out
    assert info.kind == "ivf-pq" and info.recall_at_10 >= info.recall_at_10_low
    assert info.recall_at_10_low >= 0.95 or info.nprobe == info.nlist
    assert info.bytes_per_item > 0
    first = catalog.items()[0].id
    assert catalog.search(catalog.vectors_of([first])[0], 1)[0][0].id == first
    catalog.close()


def test_bad_command_arguments_are_one_line_errors(capsys):
    assert main(["bench-search", "--kinds", "exact,hnsw"]) == 2
    assert "--kinds: unknown 'hnsw'" in capsys.readouterr().err
    assert main(["bench-search", "--workloads", "bursty"]) == 2
    assert "--workloads: unknown 'bursty'" in capsys.readouterr().err
    assert main(["index", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_serve_path_builds_a_missing_store_and_reencodes_for_a_new_encoder(config, shared_encoder):
    from server.search.service import create_app

    app = create_app(config, watch_registry=False)  # no store yet: index the catalog
    with TestClient(app) as c:
        assert c.get("/healthz").json()["items"] == 40
        mug = {"items": [{"id": "mine", "title": "Hand Made Clay Mug"}]}
        assert c.post("/items", json=mug, headers={"Authorization": "Bearer t"}).status_code == 200
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
