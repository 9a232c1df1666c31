"""The NumPy student computes the torch student's vectors from the same verified folder; it
and the ONNX Runtime one refuse a tampered folder and never import torch."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

from common.model.errors import EncoderError
from common.model.student import (
    save_student,
    student_from_teacher,
    student_tokenizer,
)
from common.model.student_files import QUERY_MODEL_DIR, STUDENT_WEIGHTS_FILE
from common.model.student_numpy import load_numpy_student
from common.security.versions import write_version

TEXTS = [
    "black casual shoes",
    "Titan Women Gold Watch &amp; Strap",
    "  a   blue\tdenim jacket\nfor men ",
    "",
    "café crème NAÏVE ＦＵＬＬ width",
    "set of 6 tea lights " * 30,  # past the 64-token context: truncated
    "red [PAD] shoes",  # special tokens typed into a query
    "[SEP] x [CLS]",
]


@pytest.fixture(scope="module")
def student_folder(untrained_encoder, tmp_path_factory):
    bert = untrained_encoder.model.text.transformer
    tower = student_from_teacher(bert, [0, 3, 5], 512)
    root = tmp_path_factory.mktemp("numpy-student") / QUERY_MODEL_DIR
    return write_version(root, lambda f: save_student(f, tower), {"kind": "query-student"})


def test_numpy_vectors_and_tokens_match_the_torch_student(student_folder):
    from common.model.student import load_query_student

    torch_student = load_query_student(student_folder)
    numpy_student = load_numpy_student(student_folder)
    assert numpy_student.version == torch_student.version
    np.testing.assert_allclose(
        numpy_student.encode_text(TEXTS), torch_student.encode_text(TEXTS), atol=2e-6
    )
    reference = student_tokenizer(torch_student.tower.cfg)(TEXTS)
    for row, ids in zip(reference.tolist(), numpy_student.token_ids(TEXTS), strict=True):
        assert row[: len(ids)] == ids and not any(row[len(ids) :])  # then padding only
    assert len(numpy_student.token_ids(TEXTS[5:6])[0]) == 64


def test_a_query_vector_does_not_depend_on_its_batch(student_folder):
    student = load_numpy_student(student_folder)
    batch = student.encode_text(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(student.encode_text([text])[0], batch[i], atol=1e-6)
    with pytest.raises(EncoderError, match="float32 only"):
        student.with_int8_text(["x"])


RUNTIMES = {
    "numpy": ("common.model.student_numpy", "load_numpy_student"),
    "onnx": ("common.model.student_onnx", "load_onnx_student"),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tampered_student_is_refused(runtime, student_folder, tmp_path):
    module, loader = RUNTIMES[runtime]
    folder = tmp_path / "v0001"
    folder.mkdir()
    for f in student_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    data = bytearray((folder / STUDENT_WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (folder / STUDENT_WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="sha256"):
        getattr(importlib.import_module(module), loader)(folder)


@pytest.mark.parametrize(
    ("runtime", "convert"), [("numpy", ""), ("onnx", ".with_int8_text(['red shoes'])")]
)
def test_the_student_loads_and_encodes_without_torch(runtime, convert, student_folder):
    module, loader = RUNTIMES[runtime]
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        f"from {module} import {loader}\n"
        f"s = {loader}(Path({str(student_folder)!r})){convert}\n"
        "v = s.encode_text(['black watch'])\n"
        "print(v.shape, sorted(m for m in ('torch', 'open_clip', 'transformers') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 384) []"
