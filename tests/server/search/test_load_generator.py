from collections import Counter

import pytest

from server.search.catalog_build import catalog_text_queries
from server.search.load_generator import run_load, summary, workload_texts


def test_uniform_sends_distinct_queries_and_zipf_repeats_its_head():
    queries = [f"q{i}" for i in range(500)]
    assert workload_texts("uniform", queries, 100) == queries[:100]
    with pytest.raises(ValueError, match="distinct"):
        workload_texts("uniform", queries, 501)
    drawn = workload_texts("zipf", queries, 5000, seed=3)
    counts = Counter(drawn)
    assert counts["q0"] > counts["q1"] > counts["q9"] > 0 and len(counts) < 500
    assert counts["q0"] / 5000 == pytest.approx(1 / sum(1 / r for r in range(1, 501)), rel=0.15)
    assert workload_texts("zipf", queries, 50, seed=3) == drawn[:50]
    with pytest.raises(ValueError, match="unknown workload"):
        workload_texts("bursty", queries, 10)


def test_load_over_http_keeps_connections_and_reads_every_answer(make_app, serve_app, search_items):
    queries = catalog_text_queries(search_items, 40)
    assert len(queries) == len(set(queries)) == 40
    assert all(q == q.lower() and q.strip() for q in queries)
    app, _ = make_app(query_precision="float32")
    with serve_app(app) as url:
        load = run_load(url, queries[:30], clients=3, k=5)
        bad = run_load(url, ["x" * 600], clients=1)
    assert load.failures == [] and len(load.latencies_ms) == 30
    assert set(load.answers) == set(queries[:30])
    assert all(len(ids) == 5 for ids in load.answers.values())
    figures = summary(load)
    assert figures["requests"] == 30 and figures["p50_ms"] <= figures["p99_ms"]
    assert figures["throughput_qps"] > 0 and figures["client_cpu_ms_per_query"] > 0
    assert bad.failures == ["HTTP 413"]  # over search.max_text_chars: answered, not a hang
