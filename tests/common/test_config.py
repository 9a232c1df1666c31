import pytest

from common.config import Config, ConfigError, config_from_dict, load_config, parse_override


def test_defaults_are_valid_and_offline():
    config = load_config()
    assert config == Config()
    assert config.encoder.model == "fedsearch-minilm-rn64"


def test_toml_file_overrides_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[pretrain]\ntime_budget_s = 30\n[paths]\nwork_dir = "elsewhere"\n')
    config = load_config(path)
    assert config.pretrain.time_budget_s == 30.0
    assert config.paths.work_dir == "elsewhere"
    assert config.encoder == Config().encoder


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"pretrain": {"time_budget": 3}}, "pretrain.time_budget"),
        ({"nosuchsection": {}}, "nosuchsection"),
        ({"pretrain": {"lr": "fast"}}, "pretrain.lr"),
        ({"pretrain": {"max_epochs": True}}, "pretrain.max_epochs"),
        ({"pretrain": {"val_fraction": 1.5}}, "pretrain.val_fraction"),
        ({"encoder": {"text_weight": -1.0}}, "encoder.text_weight"),
        ({"encoder": {"text_weight": 0, "image_weight": 0}}, "encoder.text_weight"),
        ({"encoder": {"device": "tpu"}}, "encoder.device"),
        ({"encoder": "cpu"}, "encoder"),
        ({"search": {"query_precision": "half"}}, "search.query_precision"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=rf"^{key}\b"):
        config_from_dict(data)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_parse_override():
    assert parse_override("pretrain.lr=0.1") == {"pretrain": {"lr": 0.1}}
    assert parse_override("paths.work_dir=/tmp/x") == {"paths": {"work_dir": "/tmp/x"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("lr=0.1")
