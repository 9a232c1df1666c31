import json

import numpy as np
import pytest

from server.search.index_kinds import IndexOptions
from server.search.vector_index import (
    CONFIDENCE_Z,
    VectorIndex,
    ann_recall_at_k,
    exact_top_k,
    faiss_backend,
    recall_lower_bound,
)


def clustered(n: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_at_k_counts_shared_keys():
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9], [4, 6, 7]])
    assert ann_recall_at_k(found, truth) == pytest.approx(3 / 6)


def test_recall_lower_bound_is_the_mean_less_z_standard_errors():
    truth = np.arange(40).reshape(4, 10)
    found = truth.copy()
    found[2, :5] = -1  # query 2 finds half, query 3 nothing
    found[3] = 99
    per_query = np.array([0.0, 1.0, 1.0, 1.0, 0.5, 0.0])  # two pseudo-queries, then the four
    want = per_query.mean() - CONFIDENCE_Z * per_query.std(ddof=1) / np.sqrt(6)
    assert recall_lower_bound(found, truth) == pytest.approx(want)
    assert recall_lower_bound(truth[:3], truth[:3]) < 0.5  # three perfect queries prove little
    perfect = np.arange(20_000).reshape(2000, 10)
    assert 0.99 < recall_lower_bound(perfect, perfect) < 1.0


def test_a_few_lucky_queries_do_not_pass_the_tuning():
    x = clustered(4000)
    keys = np.arange(4000)
    rng = np.random.default_rng(3)
    q = x[rng.choice(4000, 400)] + 0.05 * rng.standard_normal((400, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    options = IndexOptions(exact_max_items=1000, nprobe=1, min_recall=0.9)
    few = VectorIndex.build(x, keys, encoder_version="e", options=options, queries=q[:8])
    many = VectorIndex.build(x, keys, encoder_version="e", options=options, queries=q)
    for index in (few, many):
        assert index.info.recall_at_10_low >= 0.9 or index.info.nprobe == index.info.nlist
        assert index.info.recall_at_10 >= index.info.recall_at_10_low
    assert few.info.nprobe >= many.info.nprobe  # a wider margin for the smaller sample


def test_exact_index_matches_brute_force_and_reports_recall_one():
    x = clustered(500)
    keys = np.arange(1000, 1500)
    index = VectorIndex.build(
        x, keys, encoder_version="enc", options=IndexOptions(exact_max_items=1000)
    )
    assert index.info.kind == "exact" and index.info.recall_at_10 == 1.0
    scores, found = index.search(x[:5], 10)
    brute = np.argsort(-(x[:5] @ x.T), axis=1)[:, :10] + 1000
    assert ann_recall_at_k(found, brute) == 1.0
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.backend == faiss_backend()


def test_ivf_above_threshold_tunes_nprobe_to_reach_target_recall():
    x = clustered(4000)
    keys = np.arange(4000)
    index = VectorIndex.build(
        x,
        keys,
        encoder_version="enc",
        options=IndexOptions(exact_max_items=1000, nprobe=1, min_recall=0.97),
    )
    info = index.info
    assert info.kind == "ivf" and info.nlist > 1
    assert info.recall_at_10 >= info.recall_at_10_low >= 0.97
    assert info.nprobe > 1, "nprobe 1 should not have been enough on 40 clusters"
    # the stored figure is real: re-measure on fresh queries
    rng = np.random.default_rng(5)
    q = x[rng.choice(4000, 200)] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    measured = ann_recall_at_k(index.search(q, 10)[1], exact_top_k(x, keys, q, 10))
    assert measured >= 0.9


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_add_remove_filter_and_save_load(tmp_path, kind):
    x = clustered(2000)
    index = VectorIndex.build(
        x[:1500], np.arange(1500), encoder_version="enc", options=IndexOptions(kind=kind)
    )
    index.add(x[1500:], np.arange(1500, 2000))
    assert index.remove(np.array([0, 1, 2])) == 3
    assert index.ntotal == 1997
    found = index.search(x[0], 5)[1][0]
    assert 0 not in found
    assert index.search(x[1700], 1)[1][0][0] == 1700
    allowed = np.array([10, 20, 1999])
    got = index.search(x[1500], 5, allowed)[1][0]
    assert set(got[got >= 0]) <= set(allowed.tolist())

    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.info == index.info and loaded.ntotal == 1997
    info = json.loads((tmp_path / "index.json").read_text())
    del info["recall_at_10_low"]  # as written before the bound was stored
    (tmp_path / "index.json").write_text(json.dumps(info))
    assert VectorIndex.load(tmp_path).info.recall_at_10_low is None  # unknown, not 1.0
    np.testing.assert_array_equal(loaded.search(x[:20], 10)[1], index.search(x[:20], 10)[1])


def test_unknown_kind_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex.build(
            clustered(50), np.arange(50), encoder_version="e", options=IndexOptions(kind="hnsw")
        )
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        VectorIndex.load(tmp_path)


def test_recall_is_measured_on_given_query_vectors():
    x = clustered(3000)
    rng = np.random.default_rng(9)
    between = x[rng.choice(3000, 200)] + x[rng.choice(3000, 200)]  # queries between clusters
    between /= np.linalg.norm(between, axis=1, keepdims=True)
    index = VectorIndex.build(
        x,
        np.arange(3000),
        encoder_version="e",
        options=IndexOptions(kind="ivf", nprobe=1),
        queries=between,
    )
    assert index.info.recall_query_source == "query-vectors"
    assert index.info.recall_queries == 200
    truth = exact_top_k(x, np.arange(3000), between, 10)
    assert ann_recall_at_k(index.search(between, 10)[1], truth) == pytest.approx(
        index.info.recall_at_10, abs=1e-4
    )
    plain = VectorIndex.build(
        x, np.arange(3000), encoder_version="e", options=IndexOptions(kind="ivf")
    )
    assert plain.info.recall_query_source == "noisy-items"
