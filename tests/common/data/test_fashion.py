import dataclasses
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from common.config import default_data_dir
from common.data.fashion import load_fashion_catalog
from common.data.records import DataFormatError, LoadReport, Product, Purchase

HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName,image"
)


def write_fashion(folder: Path, rows: list[str], images: list[str]) -> Path:
    (folder / "images").mkdir(parents=True)
    for name in images:
        (folder / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8")
    (folder / "styles.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return folder


def row(item_id: str, title: str = "Nike Men Black Tshirts", image: str | None = None) -> str:
    image = f"images/{item_id}.jpg" if image is None else image
    return f"{item_id},Men,Apparel,Topwear,Tshirts,Black,Fall,2011,,{title},{image}"


def test_records_are_frozen_and_typed():
    product = Product("1", "Red Mug", None, "MUG", {"colour": "red"}, 2.5)
    purchase = Purchase("12345", "85123A", "536365", datetime(2011, 1, 2), 6, 2.55)
    for value in (product, purchase):
        first_field = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, first_field, "x")
    assert hash(product) == hash(Product("1", "Red Mug", None, "MUG", {}, 2.5))
    bare = Product("2", "t", None, "c")
    assert bare.attributes == {} and bare.price is None


def test_load_report_summary():
    report = LoadReport("x.csv", rows_read=1234, rows_kept=1230)
    assert report.summary() == "x.csv: read 1,234 rows, kept 1,230"
    report.skip("duplicate_id")
    report.skip("duplicate_id")
    report.skip("missing_image")
    report.skip("missing_image")
    assert report.skipped == Counter(duplicate_id=2, missing_image=2)
    assert report.n_skipped == 4
    assert report.summary().endswith("skipped 4 (duplicate_id: 2, missing_image: 2)")


def test_fashion_loads_and_counts_malformed_rows(tmp_path):
    rows = [
        row("1"),
        row("2", title="Puma Women Red Shoes"),
        ",Men,Apparel,Topwear,Tshirts,Black,Fall,2011,Casual,No Id,images/9.jpg",
        row("3", title=""),
        row("1", title="Duplicate of 1"),
        row("4"),  # no image file written
        row("5", image=""),  # empty image column
        "6,Men,Apparel,Topwear",  # too few fields
        row("7") + ",extra",  # too many fields
    ]
    folder = write_fashion(tmp_path / "f", rows, images=["1", "2", "3", "5", "6", "7", "9"])
    products, report = load_fashion_catalog(folder)
    assert [p.id for p in products] == ["1", "2"]
    assert report.rows_read == 9 and report.rows_kept == 2
    assert report.skipped == Counter(
        missing_id=1, missing_title=1, duplicate_id=1, missing_image=2, wrong_field_count=2
    )
    assert report.rows_read == report.rows_kept + report.n_skipped
    first = products[0]
    assert first.title == "Nike Men Black Tshirts" and first.category == "Tshirts"
    assert first.image_path == folder / "images" / "1.jpg" and first.price is None
    assert first.attributes["baseColour"] == "Black" and "usage" not in first.attributes


def test_fashion_missing_folder_or_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_fashion_catalog(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/styles\.csv"):
        load_fashion_catalog(tmp_path / "empty")


def test_fashion_missing_column_names_the_column(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "styles.csv").write_text("id,articleType,image\n1,Tshirts,images/1.jpg\n")
    with pytest.raises(DataFormatError, match="productDisplayName"):
        load_fashion_catalog(folder)


def test_real_fashion_catalog():
    folder = default_data_dir() / "fashion_product_images_small_subset"
    if not folder.is_dir():
        pytest.skip(f"no shared data at {folder}")
    products, report = load_fashion_catalog(folder)
    assert len(products) == 2557 and report.n_skipped == 0
    assert len({p.id for p in products}) == 2557
    assert all(p.title and p.image_path and p.image_path.is_file() for p in products)
    assert sum(p.category == "Tshirts" for p in products) > 300
