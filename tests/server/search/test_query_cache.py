import numpy as np
import pytest

from server.search.query_cache import QueryVectorCache, normalize_query


def test_normalizing_collapses_whitespace_and_lowercases_when_asked():
    assert normalize_query("  Black\t casual  SHOES ", lower=True) == "black casual shoes"
    assert normalize_query("  Black\t casual  SHOES ", lower=False) == "Black casual SHOES"


def test_least_recently_used_entries_go_first_and_hits_are_counted():
    cache = QueryVectorCache(2)
    a, b, c = (("m", t, "float32") for t in "abc")
    cache.put(a, np.ones(3))
    cache.put(b, np.zeros(3))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, np.ones(3))  # evicts b
    assert cache.get(b) is None and cache.get(c) is not None and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1) and cache.hit_rate == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        cache.get(a)[0] = 5.0  # stored vectors are read-only
    cache.clear()
    assert len(cache) == 0 and cache.get(a) is None and cache.hits == 3


def test_keys_separate_models_and_precisions():
    cache = QueryVectorCache(8)
    cache.put(("student:v1", "shoes", "float32"), np.ones(2))
    assert cache.get(("student:v2", "shoes", "float32")) is None
    assert cache.get(("student:v1", "shoes", "bfloat16")) is None
    with pytest.raises(ValueError):
        QueryVectorCache(0)
