import mmap
from pathlib import Path

import numpy as np
import pytest

from server.search.catalog import Catalog, CatalogStoreError, Filters, Item
from server.search.index_kinds import IndexOptions


def unit(rng, n, dim=16):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_items(n, prefix="i"):
    return [
        Item(id=f"{prefix}{i}", title=f"item {i}", category=["Watches", "Shirts"][i % 2],
             price=None if i % 5 == 0 else float(i))
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    items = make_items(40)
    vectors = unit(rng, 40)
    catalog = Catalog.create(tmp_path / "s", items, vectors, encoder_version="enc")
    yield catalog, items, vectors, rng
    catalog.close()


def state(catalog: Catalog):
    ids, vectors = catalog.all_vectors()
    order = np.argsort(ids)
    return [ids[i] for i in order], vectors[order]


def test_search_returns_items_scores_and_vectors(store):
    catalog, items, vectors, _ = store
    found, scores, vecs = catalog.search(vectors[3], 5)
    assert found[0].id == "i3" and scores[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(vecs[0], vectors[3])
    assert list(scores) == sorted(scores, reverse=True)


@pytest.mark.parametrize("exact_max_items", [1000, 0])  # rows scored directly / FAISS selector
def test_filters_on_category_and_price(tmp_path, exact_max_items):
    rng = np.random.default_rng(1)
    items, vectors = make_items(40), unit(rng, 40)
    catalog = Catalog.create(
        tmp_path / "s",
        items,
        vectors,
        encoder_version="e",
        options=IndexOptions(exact_max_items=exact_max_items),
    )
    found, _, _ = catalog.search(vectors[0], 40, Filters(categories=("watches",)))
    assert found and {it.category for it in found} == {"Watches"}
    found, _, _ = catalog.search(vectors[0], 40, Filters(price_min=10, price_max=20))
    assert sorted(int(it.price) for it in found) == [11, 12, 13, 14, 16, 17, 18, 19]
    found, _, _ = catalog.search(vectors[0], 40, Filters(categories=("nothing",)))
    assert found == []
    catalog.close()


def test_search_many_answers_each_query_like_plain_numpy(tmp_path):
    rng = np.random.default_rng(4)
    items, vectors = make_items(700), unit(rng, 700)  # one query's 600 hits: two DB reads
    catalog = Catalog.create(tmp_path / "s", items, vectors, encoder_version="e")
    queries = unit(rng, 6)
    wanted = [3, 5, 3, 600, 4, 3]
    filters = [None, None, Filters(categories=("watches",)), None,
               Filters(price_min=10, price_max=20), Filters()]  # fmt: skip
    found = catalog.search_many(queries, wanted, filters)
    catalog.close()
    for q, n, f, (hits, scores, vecs) in zip(queries, wanted, filters, found, strict=True):
        allowed = [
            i for i, it in enumerate(items)
            if f is None or not f.active
            or (not f.categories or it.category.lower() in f.categories)
            and (f.price_min is None or (it.price is not None and it.price >= f.price_min))
            and (f.price_max is None or (it.price is not None and it.price <= f.price_max))
        ]  # fmt: skip
        order = sorted(allowed, key=lambda i: -float(vectors[i] @ q))[:n]
        assert [it.id for it in hits] == [items[i].id for i in order]
        np.testing.assert_allclose(scores, vectors[order] @ q, atol=1e-5)
        np.testing.assert_array_equal(vecs, vectors[order])


def test_upsert_and_delete_survive_a_restart(store, tmp_path):
    catalog, items, vectors, rng = store
    new = unit(rng, 2)
    catalog.upsert([Item(id="i1", title="replaced"), Item(id="new", title="added")], new)
    catalog.delete(["i2"])
    assert len(catalog) == 40 and catalog.index.ntotal == 40
    before = state(catalog)
    catalog.close()

    reopened = Catalog.open(tmp_path / "s")
    after = state(reopened)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert reopened.get("i1").title == "replaced" and reopened.get("i2") is None
    assert reopened.search(new[1], 1)[0][0].id == "new"
    assert reopened.index.ntotal == len(reopened) == 40
    reopened.close()


def test_compaction_folds_the_log_and_keeps_every_change(tmp_path):
    rng = np.random.default_rng(2)
    catalog = Catalog.create(tmp_path / "s", make_items(10), unit(rng, 10), encoder_version="e")
    for i in range(5):
        catalog.upsert([Item(id=f"n{i}", title="x")], unit(rng, 1))
    assert (tmp_path / "s" / "catalog.sqlite3-wal").stat().st_size > 0
    catalog.compact()
    assert (tmp_path / "s" / "catalog.sqlite3-wal").stat().st_size == 0
    expected = state(catalog)
    catalog.close()
    reopened = Catalog.open(tmp_path / "s")
    assert state(reopened)[0] == expected[0] and len(reopened) == 15
    np.testing.assert_array_equal(state(reopened)[1], expected[1])
    reopened.close()


def test_a_rebuild_interrupted_before_its_rename_leaves_the_old_store(store, tmp_path):
    catalog, items, vectors, rng = store
    catalog.upsert([Item(id="kept", title="k")], unit(rng, 1))
    catalog.close()
    (tmp_path / "s" / ".catalog.sqlite3.new").write_bytes(b"half a database")  # a crash
    reopened = Catalog.open(tmp_path / "s")
    assert reopened.get("kept") is not None and len(reopened) == 41
    reopened.close()
    Catalog.create(tmp_path / "s", items[:3], vectors[:3], encoder_version="enc").close()
    assert not (tmp_path / "s" / ".catalog.sqlite3.new").exists()
    reopened = Catalog.open(tmp_path / "s")
    assert len(reopened) == 3
    reopened.close()


def test_a_damaged_database_is_a_clear_error(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "catalog.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CatalogStoreError, match="not a readable catalog database"):
        Catalog.open(folder)


def test_photos_no_item_names_are_removed(tmp_path):
    from server.search.catalog import PhotoUpload

    rng = np.random.default_rng(3)
    catalog = Catalog.create(tmp_path / "s", make_items(2), unit(rng, 2), encoder_version="e")
    red, blue = PhotoUpload(b"red-bytes", ".png"), PhotoUpload(b"blue-bytes", ".png")
    catalog.upsert([Item(id="a", title="a"), Item(id="b", title="b")], unit(rng, 2), [red, red])
    shared = catalog.get("a").photo
    assert shared == catalog.get("b").photo and open(shared, "rb").read() == b"red-bytes"
    catalog.delete(["a"])
    assert Path(shared).is_file()  # still the photo of b
    catalog.upsert([Item(id="b", title="b")], unit(rng, 1), [blue])  # b's photo replaced
    assert not Path(shared).exists() and Path(catalog.get("b").photo).is_file()
    blue_path = catalog.get("b").photo
    catalog.delete(["b"])
    assert not Path(blue_path).exists()
    stray = tmp_path / "s" / "photos" / "left-by-a-crash.png"
    stray.write_bytes(b"x")
    catalog.close()
    Catalog.open(tmp_path / "s").close()
    assert not stray.exists() and list((tmp_path / "s" / "photos").iterdir()) == []


def test_delete_of_unknown_id_changes_nothing(store):
    catalog, *_ = store
    with pytest.raises(KeyError):
        catalog.delete(["i0", "missing"])
    assert catalog.get("i0") is not None and len(catalog) == 40


def test_duplicate_ids_in_one_upsert_are_refused(store):
    catalog, _, _, rng = store
    with pytest.raises(ValueError, match="twice"):
        catalog.upsert([Item(id="a", title="a"), Item(id="a", title="b")], unit(rng, 2))
    assert catalog.get("a") is None


def test_a_rebuilt_store_replaces_the_live_snapshot(store, tmp_path):
    catalog, items, vectors, _ = store
    catalog.close()
    Catalog.create(tmp_path / "s", items[:5], vectors[:5], encoder_version="enc2").close()
    reopened = Catalog.open(tmp_path / "s")
    assert len(reopened) == 5 and reopened.encoder_version == "enc2"
    reopened.close()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fedsearch index"):
        Catalog.open(tmp_path / "nothing")


def test_a_store_in_use_cannot_be_opened_or_rebuilt_by_another(store, tmp_path):
    catalog, items, vectors, _ = store
    with pytest.raises(CatalogStoreError, match="in use"):
        Catalog.open(tmp_path / "s")
    with pytest.raises(CatalogStoreError, match="in use"):
        Catalog.create(tmp_path / "s", items, vectors, encoder_version="enc")
    catalog.close()
    Catalog.open(tmp_path / "s").close()


def hits(catalog, queries):
    return [
        [(it.id, float(s)) for it, s in zip(*catalog.search(q, 10)[:2], strict=True)]
        for q in queries
    ]


def test_a_reopened_catalog_searches_alike_and_holds_no_records(tmp_path):
    """Opening fills sized columns and maps the vector file: no item record, no vector in
    the heap; ids and scores are those of the catalog that was built."""
    rng = np.random.default_rng(1)
    items = [
        Item(id=f"i{i}", title=f"item {i}", category="Shirts", attributes={"usage": "Casual"})
        for i in range(600)
    ]
    vectors, queries = unit(rng, 600), unit(rng, 5)
    options = IndexOptions(kind="ivf-pq", exact_max_items=0, nlist=4, pq_bytes=4)
    created = Catalog.create(tmp_path / "s", items, vectors, encoder_version="e", options=options)
    before = hits(created, queries)
    created.close()

    reopened = Catalog.open(tmp_path / "s", exact_max_items=0)
    assert reopened.index.info.kind == "ivf-pq"
    assert hits(reopened, queries) == before
    assert mapped(reopened.vectors.file) and reopened.vectors.overlay_rows == 0
    np.testing.assert_array_equal(reopened.vectors.file, vectors)
    held = [v for v in vars(reopened).values() if isinstance(v, dict | list)]
    assert all(len(v) < 600 for v in held)  # no per-item Python objects
    rows = reopened._rows
    assert rows.n == len(rows.keys) == 600
    assert reopened.get("i7") == items[7]
    reopened.upsert([Item(id="new", title="new")], unit(rng, 1))
    assert len(rows.keys) == 601 + 601 // 8  # grown by an eighth, not doubled
    reopened.close()


def mapped(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
