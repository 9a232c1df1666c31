import os

import numpy as np
import pytest

from common.config import ConfigError, default_data_dir
from common.data.retail import product_type_word, products_from_transactions
from simulation import marketplace
from simulation.loader import load_population
from simulation.population import describe, top_items
from tests.simulation.conftest import PRODUCTS, PRODUCTS_HEADER, WordHashEncoder, make_config


def load(name, config, encoder, **kwargs):
    return load_population(name, config, encoder=encoder, progress=False, **kwargs)


def check_common_invariants(population):
    """Shown includes clicked, vectors normalized, popularity = train clicks only."""
    n = population.n_items
    assert population.item_vectors.shape[0] == n == len(population.item_ids)
    np.testing.assert_allclose(np.linalg.norm(population.item_vectors, axis=1), 1, atol=1e-5)
    clicks = []
    for device in population.devices:
        assert device.train and device.test
        for s in device.train + device.test:
            assert s.clicked in s.shown and 0 <= s.clicked < n
            assert s.shown.dtype == np.int64 and s.query_vector.dtype == np.float32
        clicks += [s.clicked for s in device.train]
    np.testing.assert_array_equal(population.popularity, np.bincount(clicks, minlength=n))


def test_retail_devices_searches_and_held_out_split(tmp_path, retail_files, encoder):
    population = load("retail", make_config(tmp_path), encoder)
    codes = list(PRODUCTS)
    assert population.item_ids == codes  # the whole catalog is ranked
    devices = {d.device_id: d for d in population.devices}
    assert set(devices) == {"customer-100", "customer-200"}  # 300 has only 4 items
    ids = population.item_ids
    c100, c200 = devices["customer-100"], devices["customer-200"]
    assert [ids[s.clicked] for s in c100.train] == codes[:8]  # order of first purchase
    assert [ids[s.clicked] for s in c100.test] == codes[8:10]  # last 20%
    assert [ids[s.clicked] for s in c200.train] == codes[2:6]
    assert [ids[s.clicked] for s in c200.test] == [codes[6]]  # at least 1
    for device in population.devices:
        assert not {s.clicked for s in device.test} & {s.clicked for s in device.train}
        for s in device.train + device.test:
            word = product_type_word(PRODUCTS[ids[s.clicked]])
            assert s.query == word
            np.testing.assert_allclose(s.query_vector, encoder.encode_text([word])[0])
            top = top_items(s.query_vector[None], population.item_vectors, 20)[0]
            assert list(s.shown[: len(top)]) == list(top)  # the base ranking's impression
    check_common_invariants(population)
    assert "2 devices" in describe(population)


def test_retail_vectors_are_cached_by_encoder_and_file(tmp_path, retail_files):
    config = make_config(tmp_path)
    first = WordHashEncoder()
    a = load("retail", config, first)
    assert first.calls > 0 and list((tmp_path / "runs" / "cache").glob("retail-items-*.npy"))
    again = WordHashEncoder()
    b = load("retail", config, again)
    assert again.calls == 0
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    other_version = WordHashEncoder(version="word-hash-2")
    load("retail", config, other_version)
    assert other_version.calls > 0
    products = retail_files["folder"] / "products.csv"
    products.write_text(products.read_text().replace("GLASS STAR", "GLASS MOON"))
    os.utime(products, ns=(1, 1))
    edited = WordHashEncoder()
    load("retail", config, edited)
    assert edited.calls == len(PRODUCTS)  # queries unchanged and cached; items re-encoded


def test_retail_runs_on_another_file_and_subsets(tmp_path, retail_files, encoder):
    other = tmp_path / "elsewhere.csv"
    lines = retail_files["rows"]
    other.write_text("\n".join(line for line in lines if ",100," not in line) + "\n")
    config = make_config(tmp_path, population={"retail_transactions": str(other)})
    other_population = load("retail", config, encoder)  # no products.csv next to it
    assert [d.device_id for d in other_population.devices] == ["customer-200"]
    assert "derived from the transactions" in other_population.info["products"]
    small = load("retail", make_config(tmp_path), encoder, num_devices=1)
    assert len(small.devices) == 1
    strict = make_config(tmp_path, population={"min_items": 11})
    with pytest.raises(ConfigError, match="min_items"):
        load("retail", strict, encoder)
    with pytest.raises(ConfigError, match="unknown name"):
        load("nope", config, encoder)


def test_retail_without_a_product_table_derives_it_from_the_transactions(
    tmp_path, retail_files, encoder
):
    folder = retail_files["folder"]
    (folder / "products.csv").unlink()
    config = make_config(tmp_path)
    population = load("retail", config, encoder)
    # the products the customers bought, with their descriptions
    assert set(population.item_ids) <= set(PRODUCTS) and len(population.item_ids) == 10
    titles = dict(zip(population.item_ids, population.item_titles, strict=True))
    assert all(titles[code] == PRODUCTS[code] for code in titles)
    assert {d.device_id for d in population.devices} == {"customer-100", "customer-200"}
    assert "derived from the transactions" in population.info["products"]
    # the same population as with that table written out as products.csv
    products, _ = products_from_transactions(retail_files["transactions"])
    rows = [PRODUCTS_HEADER] + [f"{p.id},{p.title},1,0,0,{p.price}" for p in products]
    (folder / "products.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    written = load("retail", config, WordHashEncoder())
    assert "products.csv: read 10 rows" in written.info["products"]
    assert written.item_ids == population.item_ids
    assert written.item_titles == population.item_titles
    for ours, theirs in zip(population.devices, written.devices, strict=True):
        assert ours.device_id == theirs.device_id
        for a, b in zip(ours.train + ours.test, theirs.train + theirs.test, strict=True):
            assert a.clicked == b.clicked and a.query == b.query
            np.testing.assert_array_equal(a.shown, b.shown)


def test_retail_missing_files_are_named(tmp_path, retail_files, encoder):
    missing = make_config(tmp_path, population={"retail_products": str(tmp_path / "p.csv")})
    with pytest.raises(ConfigError, match=r"population.retail_products: no file .*p\.csv"):
        load("retail", missing, encoder)
    (retail_files["folder"] / "products.csv").unlink()
    retail_files["transactions"].unlink()
    with pytest.raises(FileNotFoundError, match=r"products\.csv.*transactions\.csv\.gz"):
        load("retail", make_config(tmp_path), encoder)


@pytest.mark.skipif(
    not (default_data_dir() / "online_retail_uci" / "sample_50_customers.csv").is_file(),
    reason="shared retail data not present",
)
def test_retail_on_the_shared_50_customer_sample(tmp_path, encoder):
    folder = default_data_dir() / "online_retail_uci"
    config = make_config(
        tmp_path,
        paths={"data_dir": str(default_data_dir()), "work_dir": str(tmp_path / "runs")},
        population={"retail_transactions": str(folder / "sample_50_customers.csv")},
    )
    population = load("retail", config, encoder)
    assert len(population.devices) == 50
    for device in population.devices:
        n = len(device.train) + len(device.test)
        assert n >= 10 and len(device.test) == max(1, int(n * 0.2))
    check_common_invariants(population)


def market_config(tmp_path, **population):
    settings = {"shoppers": 6, "train_searches": 8, "test_searches": 3, "impression_size": 5}
    return make_config(tmp_path, population={**settings, **population})


def test_marketplace_shoppers_and_held_out_searches(tmp_path, fashion_folder, encoder):
    population = load("marketplace", market_config(tmp_path), encoder)
    assert len(population.devices) == 6 and population.n_items == 31
    for device in population.devices:
        assert len(device.train) == 8 and len(device.test) == 3
        targets = [s.clicked for s in device.test]
        assert len(set(targets)) == 3  # distinct future purchases
        assert not set(targets) & {s.clicked for s in device.train}  # never clicked in train
        for s in device.train:
            assert len(s.shown) == 5  # train clicks come from the base top-5 impression
    check_common_invariants(population)


def test_marketplace_test_targets_do_not_depend_on_the_base_ranking(
    tmp_path, fashion_folder, encoder
):
    config = market_config(tmp_path)
    a = load("marketplace", config, encoder)
    b = load("marketplace", config, WordHashEncoder(dim=16, version="other"))
    assert not np.allclose(a.item_vectors[:, :16], b.item_vectors)
    for da, db in zip(a.devices, b.devices, strict=True):
        assert [(s.query, s.clicked) for s in da.test] == [(s.query, s.clicked) for s in db.test]


def test_marketplace_shoppers_do_not_depend_on_population_size(tmp_path, fashion_folder, encoder):
    config = market_config(tmp_path)
    small = load("marketplace", config, encoder, num_devices=2)
    large = load("marketplace", config, encoder, num_devices=5)
    for ds, dl in zip(small.devices, large.devices[:2], strict=True):
        assert [s.clicked for s in ds.train + ds.test] == [s.clicked for s in dl.train + dl.test]
    other_seed = load("marketplace", config, encoder, num_devices=2, seed=1)
    assert [s.clicked for s in other_seed.devices[0].test] != [
        s.clicked for s in small.devices[0].test
    ] or [s.query for s in other_seed.devices[0].train] != [s.query for s in small.devices[0].train]


def shopper_and_query():
    utility = np.zeros(10)
    shopper = marketplace.Shopper("Men", np.ones(1), np.ones(1), utility)
    return shopper, marketplace.ShopperQuery("q", np.array([0, 9]))


def test_click_model_is_position_biased_and_only_on_matching_items():
    shopper, query = shopper_and_query()
    shown = np.arange(10)
    rng = np.random.default_rng(0)
    clicks = [marketplace.click(shown, query, shopper, 1.0, 0.5, rng) for _ in range(2000)]
    assert set(clicks) == {0, 9}
    ratio = clicks.count(0) / clicks.count(9)
    assert 7 < ratio < 14  # examination 1/(p+1): position 0 vs 9 is 10x, equal utility
    flat = [marketplace.click(shown, query, shopper, 0.0, 0.5, rng) for _ in range(2000)]
    assert 0.8 < flat.count(0) / flat.count(9) < 1.25
    assert marketplace.click(shown, query, shopper, 1.0, 0.5, rng, excluded={0}) == 9
    assert marketplace.click(np.arange(1, 9), query, shopper, 1.0, 0.5, rng) is None


def test_best_unseen_is_the_top_utility_matching_item():
    shopper, _ = shopper_and_query()
    shopper.utility[:] = np.arange(10)
    query = marketplace.ShopperQuery("q", np.array([2, 7, 5]))
    assert marketplace.best_unseen(query, shopper, set()) == 7
    assert marketplace.best_unseen(query, shopper, {7}) == 5
    assert marketplace.best_unseen(query, shopper, {2, 5, 7}) is None
