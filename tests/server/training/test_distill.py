import gzip
import json

import numpy as np
import pytest

import common.model.encoder
from common.cli import main
from common.data.records import Product
from common.model.student import load_query_student
from common.model.student_files import QUERY_MODEL_DIR
from common.security.versions import latest_version, read_manifest
from server.training.distill_texts import fashion_phrases, retail_phrases, split_phrases


def test_phrases_follow_both_populations_query_shapes():
    shoe = Product(
        "1", "Nike Men Black Running Shoes", None, "Sports Shoes",
        {"baseColour": "Black", "gender": "Men", "usage": "Sports"},
    )  # fmt: skip
    phrases = fashion_phrases([shoe])
    expected = {"sports shoes", "black sports shoes", "men sports shoes", "women sports shoes"}
    assert expected | {"sports shoes for men", "men black running"} <= phrases
    mug = Product("22", "WHITE HANGING HEART T-LIGHT HOLDER", None, "HOLDER")
    assert {"holder", "t-light holder", "white hanging heart"} <= retail_phrases([mug])
    train, held = split_phrases([f"p{i}" for i in range(50)], heldout=10, max_train=30, seed=0)
    assert len(held) == 10 and len(train) == 30 and not set(train) & set(held)
    with pytest.raises(ValueError, match="held-out"):
        split_phrases(["a", "b"], heldout=5, max_train=10, seed=0)


@pytest.fixture
def data_dir(tmp_path, small_catalog, retail_dir):
    data = tmp_path / "data"
    (data / "online_retail_uci").mkdir(parents=True)
    (data / "fashion_product_images_small_subset").symlink_to(small_catalog)
    # transactions alone (no products.csv): distillation derives the retail product table
    lines = (retail_dir / "sample_50_customers.csv").read_text(encoding="utf-8").splitlines()
    text = "\n".join(lines[:81]) + "\n"
    (data / "online_retail_uci" / "transactions.csv.gz").write_bytes(gzip.compress(text.encode()))
    return data


def test_distill_command_trains_evaluates_and_saves_a_verified_student(
    tmp_path, data_dir, monkeypatch, untrained_encoder, capsys
):

    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
    work = tmp_path / "work"
    args = [
        "distill", "--steps", "3", "--batch-size", "16", "--max-train", "150",
        "--heldout", "20", "--layers", "0", "--ffn", "64", "--threads", "1",
        "--set", f"paths.data_dir={data_dir}", "--set", f"paths.work_dir={work}",
        "--set", "encoder.pretrained=none",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "top-10 overlap with the teacher" in printed and "title->photo R@10" in printed
    folder = latest_version(work / QUERY_MODEL_DIR)
    manifest = read_manifest(folder)
    assert manifest["teacher"] == untrained_encoder.version
    assert "derived from the transactions" in manifest["data"]["retail_products"]
    assert manifest["settings"]["layers"] == [0] and manifest["settings"]["ffn"] == 64
    metrics = manifest["metrics"]
    assert 0 <= metrics["top10_overlap_fashion"] <= 1 and metrics["heldout_queries"] == 20
    assert metrics["size_mb"]["student"] < metrics["size_mb"]["teacher"]
    assert set(metrics["ms_per_query"]) == {"teacher", "student"}
    assert json.loads((folder / "query_student.json").read_text())["ffn"] == 64
    student = load_query_student(folder)
    assert student.encode_text(["black shoes"]).shape == (1, 384)


def test_distill_arguments_are_checked(capsys):
    assert main(["distill", "--layers", "a,b"]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["distill", "--steps", "-1"]) == 2
    assert "--steps: must be >= 0" in capsys.readouterr().err


def test_zero_steps_over_every_layer_copy_the_teachers_text_tower(
    tmp_path, data_dir, monkeypatch, untrained_encoder
):
    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
    work = tmp_path / "work"
    args = [
        "distill", "--steps", "0", "--layers", "0,1,2,3,4,5", "--ffn", "1536",
        "--max-train", "50", "--heldout", "20", "--threads", "1",
        "--set", f"paths.data_dir={data_dir}", "--set", f"paths.work_dir={work}",
        "--set", "encoder.pretrained=none",
    ]  # fmt: skip
    assert main(args) == 0
    folder = latest_version(work / QUERY_MODEL_DIR)
    metrics = read_manifest(folder)["metrics"]
    assert metrics["final_loss"] is None and metrics["top10_overlap_fashion"] == 1.0
    texts = ["black casual shoes", "Titan Women Gold Watch", "set of 6 tea lights"]
    np.testing.assert_allclose(
        load_query_student(folder).encode_text(texts),
        untrained_encoder.encode_text(texts),
        atol=1e-5,
    )
