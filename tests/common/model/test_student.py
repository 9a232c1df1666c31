import numpy as np
import pytest

from common.model.encoder import EncoderError
from common.model.student import (
    QueryStudent,
    load_query_student,
    save_student,
    student_from_teacher,
)
from common.model.student_files import QUERY_MODEL_DIR, STUDENT_WEIGHTS_FILE, query_model_folder
from common.security.versions import write_version

QUERIES = ["black casual shoes", "Titan Women Gold Watch", "a blue denim jacket for men"]


def test_a_full_copy_of_the_teacher_gives_its_vectors(untrained_encoder):
    bert = untrained_encoder.model.text.transformer
    copy = QueryStudent(student_from_teacher(bert, range(6), 1536), version="copy")
    np.testing.assert_allclose(
        copy.encode_text(QUERIES), untrained_encoder.encode_text(QUERIES), atol=1e-5
    )


def test_a_pruned_student_is_small_and_batch_independent(untrained_encoder):
    bert = untrained_encoder.model.text.transformer
    student = QueryStudent(student_from_teacher(bert, [0, 5], 256), version="s")
    assert len(student.tower.blocks) == 2 and student.tower.blocks[0].ffn_in.out_features == 256
    batch = student.encode_text(QUERIES)
    assert batch.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(QUERIES):
        np.testing.assert_allclose(student.encode_text([text])[0], batch[i], atol=1e-6)
    with pytest.raises(EncoderError, match="layers"):
        student_from_teacher(bert, [6], 256)
    with pytest.raises(EncoderError, match="ffn"):
        student_from_teacher(bert, [0], 4096)


def test_a_saved_student_loads_verified_and_a_tampered_one_is_refused(untrained_encoder, tmp_path):
    bert = untrained_encoder.model.text.transformer
    tower = student_from_teacher(bert, [1], 128)
    root = tmp_path / QUERY_MODEL_DIR
    folder = write_version(root, lambda f: save_student(f, tower), {"kind": "query-student"})
    assert query_model_folder("latest", tmp_path) == folder
    loaded = load_query_student(folder)
    assert loaded.version.startswith("query-student:v0001:")
    np.testing.assert_allclose(
        loaded.encode_text(QUERIES),
        QueryStudent(tower, version="x").encode_text(QUERIES),
        atol=1e-6,
    )
    data = bytearray((folder / STUDENT_WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (folder / STUDENT_WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="sha256"):
        load_query_student(folder)


def test_missing_students_are_named(tmp_path):
    with pytest.raises(EncoderError, match="fedsearch distill"):
        query_model_folder("latest", tmp_path)
    with pytest.raises(EncoderError, match="no folder"):
        query_model_folder(str(tmp_path / "nope"), tmp_path)
