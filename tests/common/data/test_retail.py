import gzip
import hashlib
import logging
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from common.config import default_data_dir
from common.data.records import DataFormatError, Purchase
from common.data.retail import (
    customer_histories,
    is_product_code,
    load_retail_catalog,
    load_retail_products,
    load_retail_transactions,
    product_type_word,
    products_from_transactions,
    split_history,
)

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,UK",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,UK",
    "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,UK",  # no customer
    "C536379,22633,HAND WARMER UNION JACK,-1,2010-12-01 09:41:00,1.85,14527,UK",  # cancelled
    "536380,22634,CHILDS BREAKFAST SET,0,2010-12-01 09:41:00,9.95,14527,UK",  # qty 0
    "536381,22635,MINI CAKE STAND,2,2010-12-01 09:41:00,0.0,14527,UK",  # free
    "536382,POST,POSTAGE,1,2010-12-01 09:45:00,18.0,12583,France",  # fee
    "536383,gift_0001_20,Dotcomgiftshop Gift Voucher,1,2010-12-01 09:45:00,17.0,12583,UK",
    "536384,DCGSSGIRL,GIRLS PARTY BAG,1,2010-12-01 09:45:00,3.3,12583,UK",  # marketplace
    "536385,PADS,PADS TO MATCH ALL CUSHIONS,1,2010-12-01 09:45:00,0.001,12583,UK",
    "536386,m,Manual,1,2010-12-01 09:45:00,0.5,12583,UK",  # manual, lower case
    "536387,22636,CAKE STAND,two,2010-12-01 09:45:00,1.0,12583,UK",  # bad quantity
    "536388,22637,CAKE STAND,2,yesterday,1.0,12583,UK",  # bad date
    "536389,22638,CAKE STAND,2,2010-12-01 09:45:00,1.0,12583",  # missing field
]


def write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    text = "\n".join([header, *lines]) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_transactions_cleaning_rules_each_counted(tmp_path, name):
    purchases, report = load_retail_transactions(write(tmp_path / name, ROWS))
    assert purchases == [
        Purchase("17850", "85123A", "536365", datetime(2010, 12, 1, 8, 26), 6, 2.55),
        Purchase("17850", "71053", "536365", datetime(2010, 12, 1, 8, 26), 6, 3.39),
    ]
    assert report.rows_read == 14 and report.rows_kept == 2
    assert report.skipped == Counter(
        missing_customer_id=1,
        cancellation=1,
        non_positive_quantity=1,
        non_positive_price=1,
        non_product_code=5,
        bad_number=1,
        bad_date=1,
        wrong_field_count=1,
    )


def test_transactions_missing_file_and_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.csv.gz"):
        load_retail_transactions(tmp_path / "absent.csv.gz")
    path = write(tmp_path / "t.csv", [], header=HEADER.replace("CustomerID", "Customer"))
    with pytest.raises(DataFormatError, match="CustomerID"):
        load_retail_transactions(path)


def test_is_product_code_and_type_word():
    assert is_product_code("85123A") and is_product_code("15056bl")
    for code in (
        "POST",
        "DOT",
        "C2",
        "M",
        "m",
        "BANK CHARGES",
        "AMAZONFEE",
        "CRUK",
        "B",
        "D",
        "S",
        "PADS",
        "gift_0001_10",
        "DCGS0003",
        "DCGSSBOY",
        "",
    ):
        assert not is_product_code(code), code
    assert product_type_word("WHITE HANGING HEART T-LIGHT HOLDER") == "HOLDER"
    assert product_type_word('SET OF 4 "GLAMOROUS"') == "GLAMOROUS"
    assert product_type_word("") == ""


def test_products_loader(tmp_path):
    lines = [
        "10002,INFLATABLE POLITICAL GLOBE,1,49,40,0.85",
        "15056bl,EDWARDIAN PARASOL BLACK,1,0,0,",  # never bought: no price
        "10002,DUPLICATE,1,1,1,1.0",
        "POST,POSTAGE,1,1099,331,18.0",
        "20000,,1,1,1,1.0",  # no description
        "20001,BAD PRICE MUG,1,1,1,cheap",
    ]
    header = "StockCode,Description,n_descriptions,n_purchase_rows,n_customers,median_unit_price"
    products, report = load_retail_products(write(tmp_path / "products.csv", lines, header))
    assert [(p.id, p.category, p.price) for p in products] == [
        ("10002", "GLOBE", 0.85),
        ("15056bl", "BLACK", None),
    ]
    assert products[0].title == "INFLATABLE POLITICAL GLOBE" and products[0].image_path is None
    assert report.skipped == Counter(
        duplicate_id=1, non_product_code=1, missing_title=1, bad_number=1
    )


def purchase(customer: str, item: str, day: int) -> Purchase:
    return Purchase(customer, item, f"inv{day}", datetime(2011, 1, day), 1, 1.0)


def test_customer_histories_distinct_in_first_purchase_order():
    purchases = [
        purchase("a", "x", 3),
        purchase("a", "y", 1),  # earlier: y comes first
        purchase("a", "x", 2),  # x first bought on day 2
        purchase("a", "y", 4),  # repeat, not listed again
        purchase("a", "z", 5),
        purchase("b", "x", 1),
    ]
    assert customer_histories(purchases, min_items=1) == {"a": ["y", "x", "z"], "b": ["x"]}
    assert customer_histories(purchases, min_items=3) == {"a": ["y", "x", "z"]}


def test_split_history():
    # 10 items * 0.2 = 2 held out; 7 * 0.2 = 1.4 -> 1; 2 * 0.2 = 0.4 -> at least 1
    assert split_history(list("abcdefghij")) == (list("abcdefgh"), ["i", "j"])
    assert split_history(list("abcdefg")) == (list("abcdef"), ["g"])
    assert split_history(["a", "b"]) == (["a"], ["b"])
    with pytest.raises(ValueError):
        split_history(["a"])
    with pytest.raises(ValueError):
        split_history(list("abc"), holdout_fraction=1.0)


SHIPPED_SHA256 = {  # the figures below are these files' (the data folder's README)
    "transactions.csv.gz": "f3eb9476b78cf2e24fbdb152ce6898c5e8e6c94d985d1f4936e3f53f756e2cdd",
    "products.csv": "ddbb08b0b0817da869bc19a5d8bcbd8fd8d5cbe864a9104b5a63b669bf34e169",
    "sample_50_customers.csv": "6c095c700eb65f5b3ac076ba331333018c86ee234d7b19e2fd1f64fbe101e710",
}


def shipped(name: str) -> Path:
    """A file of the shipped data folder; skip when it is absent or another file."""
    path = default_data_dir() / "online_retail_uci" / name
    if not path.is_file():
        pytest.skip(f"no shared data at {path}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != SHIPPED_SHA256[name]:
        pytest.skip(f"{path} is not the shipped file: its figures are not known here")
    return path


def test_real_sample_50_customers():
    purchases, report = load_retail_transactions(shipped("sample_50_customers.csv"))
    # the README: 5,159 clean rows of 50 customers, 1,479 distinct items
    assert report.rows_read == 5159 and report.n_skipped == 0
    assert len({p.customer_id for p in purchases}) == 50
    assert len({p.item_id for p in purchases}) == 1479
    assert len(customer_histories(purchases, min_items=10)) == 50


def test_real_transactions():
    purchases, report = load_retail_transactions(shipped("transactions.csv.gz"))
    assert report.rows_read == 439_391
    assert report.skipped["missing_customer_id"] == 135_080
    # README-clean rows here (kept + non-product codes): about 3/4 of the full 397,884
    readme_clean = report.rows_kept + report.skipped["non_product_code"]
    assert readme_clean == 297_422 and report.rows_kept == 296_224
    histories = customer_histories(purchases)
    # 3/4 of the README's 4,338 customers (4,080 with >= 5 distinct items)
    assert len({p.customer_id for p in purchases}) == 3209
    assert len(histories) == 3024
    assert len({p.item_id for p in purchases}) == 3593
    # without products.csv: every code described in the file, the 3,593 bought ones priced
    derived, _ = products_from_transactions(shipped("transactions.csv.gz"))
    assert len(derived) == 3897 and sum(p.price is not None for p in derived) == 3593
    assert {p.item_id for p in purchases} <= {p.id for p in derived}  # the same customers


def test_real_products():
    products, report = load_retail_products(shipped("products.csv"))
    assert report.rows_read == 3958
    assert len(products) == 3958 - report.skipped["non_product_code"] == 3931
    assert all(is_product_code(p.id) and p.category for p in products)


DERIVED_ROWS = [
    "1,85123A,CREAM HEART HOLDER,2,2011-01-01 10:00:00,2.0,17850,UK",
    "2,85123A,WHITE HEART HOLDER,1,2011-01-02 10:00:00,3.0,17850,UK",
    "3,85123A,WHITE HEART HOLDER,1,2011-01-03 10:00:00,4.0,12583,UK",
    "4,85123A,WHITE HEART HOLDER,1,2011-01-04 10:00:00,5.0,,UK",  # no customer: title only
    "5,85123A,,1,2011-01-05 10:00:00,9.0,12583,UK",  # no description: price only
    "6,71053,WHITE METAL LANTERN,1,2011-01-01 10:00:00,3.0,17850,UK",
    "7,71053,METAL LANTERN,1,2011-01-02 10:00:00,1.0,17850,UK",  # tie: alphabetical first
    "C8,22633,HAND WARMER UNION JACK,-1,2011-01-01 10:00:00,1.85,14527,UK",  # never bought
    "9,22634,,1,2011-01-01 10:00:00,1.0,,UK",  # names no product
    "10,POST,POSTAGE,1,2011-01-01 10:00:00,18.0,12583,UK",
    "11,22635,MINI CAKE STAND,1,2011-01-01 10:00:00,1.0,12583",  # missing field
]


def test_products_derived_from_transactions(tmp_path):
    products, report = products_from_transactions(write(tmp_path / "t.csv", DERIVED_ROWS))
    assert [(p.id, p.title, p.category, p.price) for p in products] == [
        ("22633", "HAND WARMER UNION JACK", "JACK", None),
        ("71053", "METAL LANTERN", "LANTERN", 2.0),
        ("85123A", "WHITE HEART HOLDER", "HOLDER", 3.5),  # 3 rows to 1; median of 2, 3, 4, 9
    ]
    assert report.rows_read == 11 and report.rows_kept == 3
    assert report.skipped == Counter(non_product_code=1, missing_title=1, wrong_field_count=1)
    reordered, _ = products_from_transactions(write(tmp_path / "r.csv", DERIVED_ROWS[::-1]))
    assert reordered == products  # nothing depends on the row order


def as_products_csv(products) -> list[str]:
    """``products`` as rows of the shipped ``products.csv`` (counts left at 0)."""
    return [f"{p.id},{p.title},1,0,0,{'' if p.price is None else p.price}" for p in products]


def test_catalog_without_products_csv_is_derived_and_logged(tmp_path, caplog):
    alone = tmp_path / "alone"
    alone.mkdir()
    transactions = write(alone / "transactions.csv.gz", DERIVED_ROWS)
    with caplog.at_level(logging.INFO, logger="common.data.retail"):
        derived, report = load_retail_catalog(transactions)
    assert "derived 3 products from the transactions" in caplog.text
    assert "derived from the transactions" in report.source
    header = "StockCode,Description,n_descriptions,n_purchase_rows,n_customers,median_unit_price"
    write(alone / "products.csv", as_products_csv(derived), header)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="common.data.retail"):
        from_file, file_report = load_retail_catalog(transactions)
    assert file_report.source.endswith("products.csv") and "derived" not in caplog.text
    assert from_file == derived


def test_catalog_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"products\.csv.*transactions\.csv\.gz"):
        load_retail_catalog(tmp_path / "transactions.csv.gz")
    transactions = write(tmp_path / "transactions.csv.gz", DERIVED_ROWS)
    with pytest.raises(FileNotFoundError, match="elsewhere.csv"):
        load_retail_catalog(transactions, tmp_path / "elsewhere.csv")
