"""The deferred base encoder, and a photo that fails beside text queries."""

import threading

import numpy as np
import pytest

import common.model.encoder
from common.config import config_from_dict
from common.model.encoder_files import ENCODER_WEIGHTS_FILE
from common.model.errors import EncoderError
from common.security.versions import write_version
from server.search.base_encoder import DeferredEncoder
from server.search.query_encoder import QueryEncoder
from tests.server.search.test_service import png_bytes

MODEL = "fedsearch-minilm-rn64"


def checkpoint(root):
    write = lambda f: (f / ENCODER_WEIGHTS_FILE).write_bytes(b"weights")  # noqa: E731
    return write_version(root, write, {"model": MODEL})


def test_latest_is_pinned_at_start_and_a_failed_build_is_not_retried(tmp_path, monkeypatch):
    first = checkpoint(tmp_path / "encoders")
    config = config_from_dict({"paths": {"encoder_dir": str(tmp_path / "encoders")}})
    deferred = DeferredEncoder(config)
    assert deferred.version.startswith(f"{MODEL}:{first.name}:") and deferred.dim == 384
    checkpoint(tmp_path / "encoders")  # a `fedsearch pretrain` while the service runs
    calls = []

    def failing(model, pretrained, **kwargs):
        calls.append(pretrained)
        raise EncoderError("no GPU, no luck")

    monkeypatch.setattr(common.model.encoder, "create_encoder", failing)
    with pytest.raises(EncoderError, match="no luck"):
        deferred.load()
    with pytest.raises(EncoderError, match="could not be built"):
        deferred.encode_image([])
    assert calls == [str(first)]  # the version found at start, built once


class BlockingTexts:
    """A text tower whose first call waits, so that later queries queue into one batch."""

    version, text_precision = "stub", "float32"

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        self.release.wait(10)
        return np.ones((len(texts), 4), dtype=np.float32)


class BrokenPhotos:
    dim = 4

    def encode_image(self, images):
        raise RuntimeError("bad photo")


def test_a_failing_photo_fails_its_own_request_only():
    texts = BlockingTexts()
    encoder = QueryEncoder(texts, BrokenPhotos())
    try:
        first = encoder.submit("a")
        while not texts.calls:  # the worker holds the first query
            threading.Event().wait(0.01)
        photo = encoder.submit(None, object())
        text = encoder.submit("b")
        threading.Event().wait(0.2)  # both wait in the queue: one batch
        texts.release.set()
        assert first.result(10).shape == (4,) and text.result(10).shape == (4,)
        with pytest.raises(RuntimeError, match="bad photo"):
            photo.result(10)
    finally:
        encoder.close()
    assert texts.calls[1] == ["b"]


def test_a_photo_query_gets_503_when_the_deferred_encoder_cannot_be_built(
    tmp_path, monkeypatch, search_items, search_vectors, untrained_encoder
):
    from fastapi.testclient import TestClient

    from common.model.student import save_student, student_from_teacher
    from common.model.student_files import QUERY_MODEL_DIR
    from server.search.catalog_build import create_catalog
    from server.search.service import create_app

    tower = student_from_teacher(untrained_encoder.model.text.transformer, [0], 64)
    write_version(tmp_path / "work" / QUERY_MODEL_DIR, lambda f: save_student(f, tower), {})
    config = config_from_dict(
        {
            "paths": {"work_dir": str(tmp_path / "work")},
            "encoder": {"pretrained": "none", "query_model": "latest"},
            "search": {"query_runtime": "numpy"},
        }
    )
    catalog = create_catalog(config, search_items, search_vectors, untrained_encoder.version)

    def failing(*args, **kwargs):
        raise EncoderError("/secret/path: no weights")

    monkeypatch.setattr(common.model.encoder, "create_encoder", failing)
    app = create_app(config, encoder=DeferredEncoder(config), catalog=catalog, watch_registry=False)
    with TestClient(app) as c:
        photo = c.post("/search", files={"image": ("a.png", png_bytes(), "image/png")})
        text = c.post("/search", json={"text": "black watch"})
    assert photo.status_code == 503 and "/secret" not in photo.text
    assert photo.json()["error"]["field"] == "server" and text.status_code == 200
