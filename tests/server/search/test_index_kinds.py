import logging

import faiss
import numpy as np
import pytest

from server.search.index_kinds import (
    ANN_KINDS,
    DEFAULT_INDEX_OPTIONS,
    IndexOptions,
    choose_kind,
    code_bytes,
    product_code_bytes,
)
from server.search.vector_index import VectorIndex, ann_recall_at_k, exact_top_k
from tests.server.search.test_vector_index import clustered


def test_the_most_exact_kind_that_fits_the_budget_is_chosen(caplog):
    mb = 2**20
    kw = {"exact_max_items": 1000, "pq_bytes": 48}
    assert choose_kind(1000, 384, memory_mb=1, **kw) == "exact"
    assert choose_kind(100_000, 384, memory_mb=154_400_000 / mb, **kw) == "ivf"
    assert choose_kind(100_000, 384, memory_mb=100, **kw) == "ivf-fp16"
    assert choose_kind(1_000_000, 384, memory_mb=512, **kw) == "ivf-sq8"
    assert choose_kind(1_000_000, 384, memory_mb=100, **kw) == "ivf-pq"
    with caplog.at_level(logging.WARNING):
        assert choose_kind(10_000_000, 384, memory_mb=100, **kw) == "ivf-pq"
    assert "over search.index_memory_mb" in caplog.text
    assert [code_bytes(k, 384, 48) for k in ANN_KINDS] == [1544, 776, 392, 56]


def test_product_codes_default_to_a_byte_per_four_dimensions_and_a_million_items_get_them():
    assert [product_code_bytes(d, 0) for d in (384, 512, 64, 30, 3)] == [96, 128, 16, 6, 1]
    assert product_code_bytes(384, 48) == 48
    o = DEFAULT_INDEX_OPTIONS
    kw = {"exact_max_items": o.exact_max_items, "memory_mb": o.memory_mb, "pq_bytes": o.pq_bytes}
    assert choose_kind(1_000_000, 384, **kw) == "ivf-pq"  # ivf-sq8's 392 MB: over 1 GB at peak
    assert choose_kind(500_000, 384, **kw) == "ivf-sq8"
    assert code_bytes("ivf-pq", 384, o.pq_bytes) == 104


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Small indexes: FAISS's OpenMP threads only spin on a shared 2-core machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x = clustered(6000, dim=64, clusters=60)
    rng = np.random.default_rng(3)
    q = x[rng.choice(len(x), 300)] + 0.1 * rng.standard_normal((300, 64)).astype(np.float32)
    return x, np.arange(10_000, 16_000), q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_every_kind_reaches_its_recall_and_stores_its_size(data, kind):
    x, keys, q = data
    index = VectorIndex.build(
        x,
        keys,
        encoder_version="e",
        options=IndexOptions(kind=kind, nprobe=1, min_recall=0.95, pq_bytes=16, refine_factor=10),
        queries=q[:150],
    )
    info = index.info
    assert info.kind == kind and info.recall_at_10 >= 0.95 and info.nprobe >= 1
    assert code_bytes(kind, 64, 16) <= info.bytes_per_item < code_bytes(kind, 64, 16) + 40
    assert info.refine_factor == (10 if kind == "ivf-pq" else 0)
    lookup = dict(zip(keys.tolist(), x, strict=True))

    def full(found):
        return np.array([lookup[int(k)] for k in found]).reshape(-1, 64)

    held_out = q[150:]
    found = index.search(held_out, 10, full_vectors=full)[1]
    assert ann_recall_at_k(found, exact_top_k(x, keys, held_out, 10)) >= 0.9


def test_pq_rescoring_on_full_vectors_gives_exact_scores_and_beats_codes_alone(data):
    x, keys, q = data
    index = VectorIndex.build(
        x,
        keys,
        encoder_version="e",
        options=IndexOptions(kind="ivf-pq", pq_bytes=8, refine_factor=10),
        queries=q[:150],
    )
    rows = {int(k): i for i, k in enumerate(keys)}

    def full(found):
        return x[[rows[int(k)] for k in found]]

    truth = exact_top_k(x, keys, q[150:], 10)
    scores, refined = index.search(q[150:], 10, full_vectors=full)
    coded = index.search(q[150:], 10)[1]
    assert ann_recall_at_k(refined, truth) > ann_recall_at_k(coded, truth)
    np.testing.assert_allclose(scores[0], full(refined[0]) @ q[150], atol=1e-5)
    assert index.refine_cpu_s > 0


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
def test_compressed_kinds_take_upserts_deletes_and_survive_a_save(data, kind, tmp_path):
    x, keys, q = data
    index = VectorIndex.build(
        x, keys, encoder_version="e", options=IndexOptions(kind=kind, pq_bytes=8, recall_queries=50)
    )
    index.add(x[:1], np.array([99]))
    assert index.search(x[:1], 2)[1][0].tolist().count(99) == 1
    assert index.remove(np.array([99, keys[0]])) == 2
    assert 99 not in index.search(x[:1], 5)[1][0]
    index.save(tmp_path)
    again = VectorIndex.load(tmp_path)
    assert again.info == index.info and again.ntotal == len(x) - 1
    np.testing.assert_array_equal(again.search(q[:5], 10)[1], index.search(q[:5], 10)[1])


def test_a_gpu_that_refuses_the_index_falls_back_to_the_cpu(data, monkeypatch, caplog):
    x, keys, q = data
    index = VectorIndex.build(
        x,
        keys,
        encoder_version="e",
        options=IndexOptions(kind="ivf-pq", pq_bytes=8, recall_queries=50),
    )
    expected = index.search(q[:3], 10)
    index.backend = "faiss-gpu"

    def refuse(*args):
        raise RuntimeError("no such GPU index")

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    with caplog.at_level(logging.WARNING):
        got = index.search(q[:3], 10)
    np.testing.assert_array_equal(got[1], expected[1])
    assert index.backend == "faiss-cpu" and "stays on the CPU" in caplog.text


def test_an_ivf_pq_index_with_default_codes_stores_the_bytes_it_used(data):
    x, keys, q = data
    index = VectorIndex.build(
        x, keys, encoder_version="e", options=IndexOptions(kind="ivf-pq", recall_queries=50)
    )
    assert index.info.pq_bytes == 16 and index.index.pq.M == 16  # 64 dimensions / 4
