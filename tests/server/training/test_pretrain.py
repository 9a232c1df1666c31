import json

import numpy as np

from common.security.versions import read_manifest, verify_files
from server.training.encoder_eval import (
    category_precision,
    encoder_table,
    random_category_precision,
    random_title_to_photo,
    title_to_photo,
)
from server.training.pretrain import split_items


def test_pretrain_writes_a_verified_version_with_metrics(tiny_checkpoint):
    config, folder, metrics = tiny_checkpoint
    manifest = verify_files(folder)
    assert manifest["model"] == config.encoder.model
    assert {"open_clip_model.safetensors", "open_clip_config.json", "metrics.json"} <= set(
        manifest["files"]
    )
    assert metrics["steps"] >= 1 and metrics["n_val"] == 6 and metrics["n_train"] == 34
    rows = metrics["validation"]
    assert set(rows) == {"encoder", "encoder, photos only", "random"}
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert read_manifest(folder)["val_ids"] and len(read_manifest(folder)["val_ids"]) == 6


def test_split_is_seeded_and_disjoint(small_catalog):
    from common.data.fashion import load_fashion_catalog

    items, _ = load_fashion_catalog(small_catalog)
    train, val = split_items(items, 0.15, seed=0)
    again_train, again_val = split_items(items, 0.15, seed=0)
    assert [p.id for p in val] == [p.id for p in again_val]
    assert not {p.id for p in train} & {p.id for p in val}
    assert len(train) + len(val) == len(items)


def test_title_to_photo_metrics_by_hand():
    # 3 items; title 0 ranks photo 0 first, title 1 ranks photo 1 second, title 2 third
    titles = np.eye(3, dtype=np.float32)
    photos = np.array([[1, 0, 0], [0.9, 0.5, 0], [0.8, 0.6, 0.1]], dtype=np.float32)
    # scores title1: [0, .5, .6] -> photo1 rank 1; title2: [0, 0, .1] -> photo2 rank 0
    out = title_to_photo(titles, photos)
    assert out["R@1"] == 2 / 3 and out["R@5"] == 1.0
    assert np.isclose(out["MRR"], (1 + 0.5 + 1) / 3)
    rnd = random_title_to_photo(4)
    assert rnd["R@1"] == 0.25 and rnd["R@10"] == 1.0
    assert np.isclose(rnd["MRR"], (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_category_precision_by_hand():
    from common.data.records import Product

    items = [
        Product(str(i), f"t{i}", None, kind, {"baseColour": colour})
        for i, (kind, colour) in enumerate(
            [("Shoes", "Black"), ("Shoes", "Red"), ("Watches", "Black"), ("Shoes", "Black")]
        )
    ]
    queries = [("Black Shoes", "Shoes", "Black")]
    item_vecs = np.eye(4, dtype=np.float32)
    query = np.array([[0.9, 0.8, 0.7, 0.1]], dtype=np.float32)  # top order: 0, 1, 2, 3
    out = category_precision(query, queries, item_vecs, items, k=2)
    assert out == {"P@2 type": 1.0, "P@2 type+colour": 0.5}
    rnd = random_category_precision(queries, items, k=2)
    assert rnd == {"P@2 type": 0.75, "P@2 type+colour": 0.5}
    assert "P@2 type" in encoder_table({"x": out})
