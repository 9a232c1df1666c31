"""One place for the base encoder: every command finds it under ``paths.encoders``, whatever
``paths.work_dir`` is; the service refuses a version trained on another encoder."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from common.config import ENCODER_DIR_ENV, config_from_dict
from common.federation.run_spec import RunSpec, base_model_label
from common.model.adapter import ADAPTER_FILE
from common.model.encoder_files import resolve_encoder
from common.model.errors import EncoderError
from common.security.versions import write_version
from tests.server.search.conftest import ADMIN_HEADERS
from tests.server.search.test_hot_swap import random_adapter


def publish_on(registry, base_model: str, seed: int):
    adapter = random_adapter(seed)
    return write_version(
        registry,
        lambda folder: adapter.save(folder / ADAPTER_FILE),
        {"kind": "query-adapter", "round": seed, "base_model": base_model},
    )


def test_a_version_of_another_base_model_is_refused_naming_both(make_app, untrained_encoder):
    app, config = make_app()
    registry = config.paths.registry
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        publish_on(registry, untrained_encoder.version, 1)
        assert c.post("/admin/reload").json()["model_version"] == "v0001"
        publish_on(registry, "fedsearch-minilm-rn64:v0007:0123abcd", 2)
        result = c.post("/admin/reload").json()
        assert result["swapped"] is False and result["model_version"] == "v0001"
        assert "fedsearch-minilm-rn64:v0007:0123abcd" in result["error"]
        assert untrained_encoder.version in result["error"]


def test_the_encoder_is_found_apart_from_the_work_dir(tmp_path, monkeypatch, tiny_checkpoint):
    _, folder, _ = tiny_checkpoint
    monkeypatch.delenv(ENCODER_DIR_ENV, raising=False)
    plain = config_from_dict({"paths": {"work_dir": str(tmp_path / "deploy" / "work")}})
    assert plain.paths.encoders.as_posix() == "runs/encoder"
    monkeypatch.setenv(ENCODER_DIR_ENV, str(folder.parent))
    config = config_from_dict({"paths": {"work_dir": str(tmp_path / "deploy" / "work")}})
    assert config.paths.encoders == folder.parent
    label = base_model_label(config)
    assert label.split(":")[:2] == ["fedsearch-minilm-rn64", folder.name]
    spec = RunSpec.from_run_config({"num-devices": 3, "population": "retail"}, run_id=1)
    assert spec.base_model == label  # what the ServerApp records = the service's encoder
    none = config_from_dict({"encoder": {"pretrained": "none"}})
    assert base_model_label(none) == "fedsearch-minilm-rn64:untrained"
    with pytest.raises(EncoderError, match="no pretrained encoder under"):
        resolve_encoder("fedsearch-minilm-rn64", "latest", encoder_dir=tmp_path / "empty")
