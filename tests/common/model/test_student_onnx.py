"""The ONNX Runtime student: the torch student's vectors in float32, and int8 with a scale
per token row, so a query's vector does not depend on its batch."""

import numpy as np
import pytest

from common.model.errors import EncoderError
from common.model.int8_codes import smoothed_int8_codes
from common.model.precision import CALIBRATION_QUERIES
from common.model.student import load_query_student, save_student, student_from_teacher
from common.model.student_files import QUERY_MODEL_DIR
from common.model.student_onnx import load_onnx_student, probe_feed, student_graph
from common.security.versions import write_version
from tests.common.model.test_student_numpy import TEXTS


@pytest.fixture(scope="module")
def student_folder(untrained_encoder, tmp_path_factory):
    bert = untrained_encoder.model.text.transformer
    tower = student_from_teacher(bert, [0, 3, 5], 512)
    root = tmp_path_factory.mktemp("onnx-student") / QUERY_MODEL_DIR
    return write_version(root, lambda f: save_student(f, tower), {"kind": "query-student"})


def test_float32_matches_the_torch_student(student_folder):
    torch_student = load_query_student(student_folder)
    student = load_onnx_student(student_folder, threads=1)
    assert student.version == torch_student.version and student.text_precision == "float32"
    np.testing.assert_allclose(
        student.encode_text(TEXTS), torch_student.encode_text(TEXTS), atol=2e-6
    )
    with pytest.raises(EncoderError, match="not bfloat16"):
        student.with_bfloat16_text()


def test_int8_is_close_to_float32_smaller_and_independent_of_its_batch(student_folder):
    student = load_onnx_student(student_folder, threads=1)
    int8 = student.with_int8_text(CALIBRATION_QUERIES)
    assert student._session is None  # float32's own session waits for its first encode
    assert int8.text_precision == "int8" and student.text_precision == "float32"
    float32, batch = student.encode_text(TEXTS), int8.encode_text(TEXTS)
    assert np.sum(float32 * batch, axis=1).min() > 0.98
    assert np.abs(float32 - batch).max() > 1e-4  # quantized, not the float32 graph
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(int8.encode_text([text])[0], batch[i], atol=1e-6)
    with pytest.raises(EncoderError, match="cannot be converted again"):
        int8.with_int8_text(CALIBRATION_QUERIES)
    # the linear weights (3 layers x 4) are one byte each, the embeddings stay float32
    linear = sum(student._weights[k].size for k in student._weights if ".ffn" in k or "qkv" in k)
    assert student.size_bytes - int8.size_bytes > 2.5 * linear


def test_the_calibration_graph_is_fed_its_weights_instead_of_holding_a_copy(student_folder):
    """Its session held a second copy of every weight: start-up peaked 244 MiB higher."""
    student = load_onnx_student(student_folder, threads=1)
    graph = student_graph(student.cfg, student._weights, probe=True)
    held = {t.name for t in graph.graph.initializer}
    assert not held & set(student._weights) and "word.weight" not in held
    probe = student._new_session(graph.SerializeToString())
    ids = np.asarray(student.token_ids(["red handbag"]), dtype=np.int64)
    feed = probe_feed(student._weights) | {"ids": ids, "mask": np.ones(ids.shape, np.float32)}
    pooled = probe.run(["pooled"], feed)[0]
    np.testing.assert_allclose(
        pooled[0] / np.linalg.norm(pooled[0]), student.encode_text(["red handbag"])[0], atol=1e-6
    )


def test_int8_codes_reproduce_the_weights():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 5)).astype(np.float32)
    input_max = np.array([0.1, 1.0, 30.0, 2.0, 0.5], dtype=np.float32)  # an outlier channel
    codes = smoothed_int8_codes(weight, input_max)
    assert codes.codes.dtype == np.int8 and codes.codes.shape == (5, 6)
    rebuilt = (codes.codes * codes.scale[None, :]).T * codes.inverse_smooth[None, :]
    step = codes.scale[:, None] * codes.inverse_smooth[None, :]  # one code's worth
    assert np.all(np.abs(rebuilt - weight) <= step / 2 + 1e-6)
    assert codes.inverse_smooth[2] < codes.inverse_smooth[0]  # the outlier channel shrunk
    with pytest.raises(ValueError, match="one value per input"):
        smoothed_int8_codes(weight, input_max[:4])
