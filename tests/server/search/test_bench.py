import json

import numpy as np

import common.model.encoder
from common.cli import main
from common.model.student import save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.security.versions import write_version
from server.search.bench import _codes, perturbed_copies


def test_bench_copies_form_clusters_around_the_originals():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = perturbed_copies(x, 300)
    assert out.shape == (300, 64)
    np.testing.assert_array_equal(out[:30], x)
    cos = np.sum(out[30:] * x[np.arange(270) % 30], axis=1)
    assert 0.7 < cos.min() and cos.max() < 0.99 and 0.86 < cos.mean() < 0.96
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert _codes(["b", "a"], {"a": 0, "b": 1, "c": 2}, 3) == [1, 0, -1]


def test_bench_search_command_serves_each_kind_and_workload(
    tmp_path, small_catalog, monkeypatch, untrained_encoder, capsys
):
    """`fedsearch bench-search` end to end at toy size (the README's command, scaled down):
    a real service process, both workloads, the CPU split and the recall; then the same
    with the numpy and the onnx (int8) query runtimes, whose service holds far less memory."""
    import server.search.bench as bench

    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
    for name, value in (("TUNING_QUERIES", 30), ("WARMUP_REQUESTS", 4)):
        monkeypatch.setattr(bench, name, value)
    monkeypatch.setattr(bench, "SEQUENTIAL_REQUESTS", 10)
    monkeypatch.setattr(bench, "IN_PROCESS_QUERIES", 10)
    work = tmp_path / "work"
    tower = student_from_teacher(untrained_encoder.model.text.transformer, [0, 5], 256)
    write_version(work / QUERY_MODEL_DIR, lambda f: save_student(f, tower), {})

    def run(*settings: str) -> dict:
        out = tmp_path / "bench.json"
        args = [
            "bench-search", "--items", "1000", "--clients", "2", "--requests", "24",
            "--kinds", "ivf-pq", "--out", str(out),
            "--set", f"paths.data_dir={small_catalog.parent}",
            "--set", f"paths.work_dir={work}", "--set", "encoder.pretrained=none",
            "--set", "search.exact_max_items=100", "--set", "search.pq_bytes=16",
            "--set", "encoder.query_model=latest", *settings,
        ]  # fmt: skip
        assert main(args) == 0
        return json.loads(out.read_text())

    results = run()
    printed = capsys.readouterr().out
    assert "targets [ivf-pq, uniform]" in printed and "targets [ivf-pq, zipf]" in printed
    assert "on torch" in printed and results["query_runtime"] == "torch"
    kind = results["kinds"]["ivf-pq"]
    assert kind["index"]["kind"] == "ivf-pq" and kind["index"]["refine_factor"] == 10
    uniform, zipf = kind["workloads"]["uniform"], kind["workloads"]["zipf"]
    assert uniform["failed"] == zipf["failed"] == 0 and uniform["requests"] == 24
    assert uniform["cache_hit_rate"] == 0.0 and zipf["cache_hit_rate"] > 0.1
    split = uniform["cpu_split_ms_per_query"]
    assert split["encode"] > 0 and split["search"] > 0 and split["rerank"] > 0
    assert kind["recall_at_10_vs_exact"] > 0.8 and kind["memory"]["rss_mb"] > 100

    numpy = run("--workloads", "uniform", "--set", "search.query_runtime=numpy")
    assert "on numpy" in capsys.readouterr().out and numpy["query_runtime"] == "numpy"
    lean = numpy["kinds"]["ivf-pq"]
    assert lean["workloads"]["uniform"]["failed"] == 0
    assert abs(lean["recall_at_10_vs_exact"] - kind["recall_at_10_vs_exact"]) < 0.02
    assert lean["memory"]["rss_mb"] < kind["memory"]["rss_mb"] / 2  # no torch in the service

    onnx = run(
        "--workloads", "uniform", "--set", "search.query_runtime=onnx",
        "--set", "search.query_precision=int8",
    )  # fmt: skip
    assert "on onnx" in capsys.readouterr().out and onnx["query_runtime"] == "onnx"
    int8 = onnx["kinds"]["ivf-pq"]
    assert int8["workloads"]["uniform"]["failed"] == 0 and int8["recall_at_10_vs_exact"] > 0.8
    assert int8["memory"]["rss_mb"] < kind["memory"]["rss_mb"] / 2  # no torch either


def test_bench_search_with_more_requests_than_distinct_queries_names_the_flag(
    tmp_path, small_catalog, monkeypatch, untrained_encoder, capsys
):
    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
    args = [
        "bench-search", "--requests", "1000000", "--kinds", "ivf",
        "--set", f"paths.data_dir={small_catalog.parent}",
        "--set", f"paths.work_dir={tmp_path}", "--set", "encoder.pretrained=none",
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --requests 1000000: the catalog gives" in err and "Traceback" not in err
