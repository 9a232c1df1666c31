import pytest

import simulation.loader
from common.cli import main
from common.model.student import save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.security.versions import write_version
from simulation.query_model_check import compare_query_models, format_comparison
from tests.simulation.conftest import make_config


def test_teacher_and_student_rank_the_same_held_out_searches(
    tmp_path, fashion_folder, untrained_encoder, monkeypatch, capsys
):
    monkeypatch.setattr(simulation.loader, "create_encoder", lambda *a, **k: untrained_encoder)
    bert = untrained_encoder.model.text.transformer
    exact = student_from_teacher(bert, range(6), 1536)  # a full copy: the teacher's vectors
    work = tmp_path / "runs"
    write_version(work / QUERY_MODEL_DIR, lambda f: save_student(f, exact), {})
    settings = {"shoppers": 6, "train_searches": 4, "test_searches": 3, "impression_size": 5}
    config = make_config(tmp_path, population=settings, encoder={"pretrained": "none"})
    result = compare_query_models(config, "marketplace", progress=False)
    assert result["searches"] == 18 and result["devices"] == 6
    assert result["student"]["nDCG@10"] == pytest.approx(result["teacher"]["nDCG@10"], abs=1e-6)
    assert result["ndcg_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert "student / teacher nDCG@10: 1.0000" in format_comparison(result)

    pruned = student_from_teacher(bert, [0], 64)
    write_version(work / QUERY_MODEL_DIR, lambda f: save_student(f, pruned), {})
    sets = [f"paths.data_dir={tmp_path / 'data'}", f"paths.work_dir={work}",
            "encoder.pretrained=none", "population.shoppers=6", "population.test_searches=3",
            "population.train_searches=4"]  # fmt: skip
    args = ["check-query-model", "--population", "marketplace"]
    args += [part for s in sets for part in ("--set", s)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "query-student:v0002" in printed and "teacher (base encoder)" in printed
    assert main(["check-query-model", "--population", "mars"]) == 2
    assert "--population" in capsys.readouterr().err


def test_the_base_encoder_in_int8_is_checked_when_no_student_is_named(
    tmp_path, fashion_folder, untrained_encoder, monkeypatch, capsys
):
    monkeypatch.setattr(simulation.loader, "create_encoder", lambda *a, **k: untrained_encoder)
    settings = {"shoppers": 6, "train_searches": 4, "test_searches": 3, "impression_size": 5}
    config = make_config(
        tmp_path,
        population=settings,
        encoder={"pretrained": "none"},
        search={"query_precision": "int8"},
    )
    result = compare_query_models(config, "marketplace", progress=False)
    assert result["student_version"] == f"{untrained_encoder.version} (int8)"
    assert result["ndcg_ratio"] == pytest.approx(1.0, abs=0.1)
    sets = [f"paths.data_dir={tmp_path / 'data'}", f"paths.work_dir={tmp_path / 'runs'}",
            "encoder.pretrained=none", "population.shoppers=6", "population.test_searches=3",
            "population.train_searches=4", "search.query_precision=int8"]  # fmt: skip
    args = ["check-query-model", "--population", "marketplace"]  # the README's, scaled down
    assert main([*args, *(part for s in sets for part in ("--set", s))]) == 0
    assert f"{untrained_encoder.version} (int8)" in capsys.readouterr().out


def test_the_teachers_copy_is_checked_in_onnx_int8(
    tmp_path, fashion_folder, untrained_encoder, monkeypatch
):
    monkeypatch.setattr(simulation.loader, "create_encoder", lambda *a, **k: untrained_encoder)
    exact = student_from_teacher(untrained_encoder.model.text.transformer, range(6), 1536)
    write_version(tmp_path / "runs" / QUERY_MODEL_DIR, lambda f: save_student(f, exact), {})
    settings = {"shoppers": 6, "train_searches": 4, "test_searches": 3, "impression_size": 5}
    search = {"query_runtime": "onnx", "query_precision": "int8"}
    config = make_config(
        tmp_path, population=settings, encoder={"pretrained": "none"}, search=search
    )
    result = compare_query_models(config, "marketplace", progress=False)
    assert result["student_version"].startswith("query-student:v0001:")
    assert result["student_version"].endswith(" (int8)")
    assert result["ndcg_ratio"] == pytest.approx(1.0, abs=0.1)
