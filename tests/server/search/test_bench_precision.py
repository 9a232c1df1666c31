import pytest

import common.model.encoder
from common.cli import main
from common.config import config_from_dict
from common.data.fashion import load_fashion_catalog
from common.model.student import save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.security.versions import write_version
from server.search.bench_precision import run_precision_bench
from server.training.distill_eval import downstream, validation_items


@pytest.fixture
def config(tmp_path, small_catalog, monkeypatch, untrained_encoder):
    monkeypatch.setattr(common.model.encoder, "create_encoder", lambda *a, **k: untrained_encoder)
    data = tmp_path / "data"
    data.mkdir()
    (data / "fashion_product_images_small_subset").symlink_to(small_catalog)
    return config_from_dict(
        {
            "paths": {"data_dir": str(data), "work_dir": str(tmp_path / "work")},
            "encoder": {"pretrained": "none"},
        }
    )


def test_precisions_are_compared_with_float32(config, untrained_encoder, capsys):
    figures = run_precision_bench(config, queries=30, timed=3, rounds=1)
    rows = figures["precisions"]
    assert list(rows) == ["float32", "bfloat16", "int8"] and figures["items"] == 40
    assert rows["float32"]["cos_min"] == pytest.approx(1.0, abs=1e-5)
    assert rows["float32"]["top10_overlap"] == 1.0
    for name in ("bfloat16", "int8"):
        assert 0.98 < rows[name]["cos_mean"] < 1.0
        assert 0.5 < rows[name]["top10_overlap"] <= 1.0
    assert rows["int8"]["size_mb"] < 0.7 * rows["float32"]["size_mb"]
    assert all(r["ms_per_query"] > 0 and r["ms_per_query_batched"] > 0 for r in rows.values())
    assert rows["float32"]["alone_vs_batch_max_abs"] < 1e-5
    assert all(r["alone_vs_batch_max_abs"] < 1e-2 for r in rows.values())
    val = validation_items(config, load_fashion_catalog(config.paths.fashion)[0])
    assert figures["validation_items"] == len(val) == 6  # a seeded 15% of the 40 items
    expected = downstream(config, untrained_encoder, untrained_encoder.encode_text, val)
    for key, value in expected.items():  # distill's downstream figures, per precision
        assert rows["float32"][key] == round(value, 4)
        assert all(0 <= r[key] <= 1 for r in rows.values())
    assert "| int8 |" in capsys.readouterr().out


def test_bad_arguments_are_refused():
    assert main(["bench-precision", "--queries", "5", "--timed", "10"]) == 2
    assert main(["bench-precision", "--rounds", "0"]) == 2


def test_the_onnx_runtime_is_compared_beside_torch(config, untrained_encoder, capsys):
    """The README's `bench-precision` with the teacher's copy in ONNX Runtime, scaled down."""
    exact = student_from_teacher(untrained_encoder.model.text.transformer, range(6), 1536)
    write_version(config.paths.work / QUERY_MODEL_DIR, lambda f: save_student(f, exact), {})
    search = {"query_runtime": "onnx"}
    onnx = config_from_dict({"encoder": {"query_model": "latest"}, "search": search}, config)
    rows = run_precision_bench(onnx, queries=30, timed=3, rounds=1)["precisions"]
    assert list(rows) == ["float32", "bfloat16", "int8", "onnx float32", "onnx int8"]
    assert rows["onnx float32"]["cos_min"] == pytest.approx(1.0, abs=1e-5)
    assert rows["onnx float32"]["top10_overlap"] == 1.0
    assert 0.98 < rows["onnx int8"]["cos_mean"] < 1.0
    assert rows["onnx int8"]["alone_vs_batch_max_abs"] < 1e-6  # a scale per token row
    assert rows["onnx int8"]["size_mb"] < 0.7 * rows["onnx float32"]["size_mb"]
    assert "| onnx int8 |" in capsys.readouterr().out
