import functools

import pytest
from pydantic import ValidationError

from common.config import (
    TEXT_PRECISIONS,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
)


def test_defaults_are_valid_and_offline():
    config = load_config()
    assert config == Config()
    assert config.encoder.model == "fedsearch-minilm-rn64"
    assert config.search.query_precision in TEXT_PRECISIONS


def test_toml_file_overrides_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[pretrain]\ntime_budget_s = 30\n[paths]\nwork_dir = "elsewhere"\n')
    config = load_config(path)
    assert config.pretrain.time_budget_s == 30.0
    assert isinstance(config.pretrain.time_budget_s, float)  # an int is taken for a float
    assert config.paths.work_dir == "elsewhere"
    assert config.paths.registry == config.paths.work / "registry"
    assert config.pretrain.steps == Config().pretrain.steps
    assert config.encoder == Config().encoder


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # unknown keys, with the known ones listed
        ({"search": {"bogus": 1}}, "search.bogus: unknown key (known: admin_token, "),
        ({"pretrain": {"time_budget": 3}}, "pretrain.time_budget: unknown key"),
        ({"nosuchsection": {}}, "nosuchsection: unknown key (known: adapter, "),
        # wrong types: no coercion, and a bool is not a number
        ({"pretrain": {"lr": "fast"}}, "pretrain.lr: expected float, got str 'fast'"),
        ({"pretrain": {"steps": "3"}}, "pretrain.steps: expected int, got str '3'"),
        ({"pretrain": {"steps": True}}, "pretrain.steps: expected int, got bool"),
        ({"evaluation": {"k": 2.0}}, "evaluation.k: expected int, got float"),
        ({"evaluation": {"beta": False}}, "evaluation.beta: expected float, got bool"),
        ({"federation": {"dp": "yes"}}, "federation.dp: expected bool, got str"),
        ({"paths": {"work_dir": 3}}, "paths.work_dir: expected str, got int"),
        ({"encoder": "cpu"}, "encoder: expected a table, got str"),
        # bounds, one-sided and intervals
        ({"federation": {"clipping_norm": 0}}, "federation.clipping_norm: must be > 0"),
        ({"encoder": {"text_weight": -1.0}}, "encoder.text_weight: must be >= 0"),
        ({"pretrain": {"batch_size": 1}}, "pretrain.batch_size: must be >= 2"),
        ({"pretrain": {"val_fraction": 1.5}}, "pretrain.val_fraction: must be in (0, 1)"),
        ({"pretrain": {"val_fraction": 0}}, "pretrain.val_fraction: must be in (0, 1)"),
        ({"federation": {"delta_user": 1}}, "federation.delta_user: must be in [0, 1)"),
        ({"search": {"ann_min_recall": 1.5}}, "search.ann_min_recall: must be in (0, 1]"),
        ({"search": {"port": 70000}}, "search.port: must be in [1, 65535]"),
        ({"pretrain": {"threads": -1}}, "pretrain.threads: must be >= 0 (0 = torch default)"),
        # choices
        ({"encoder": {"device": "tpu"}}, "encoder.device: must be 'cpu', 'cuda' or 'auto'"),
        ({"device": {"optimizer": "rmsprop"}}, "device.optimizer: must be 'adam' or 'sgd'"),
        ({"search": {"query_precision": "half"}}, "search.query_precision: must be 'auto', "),
        # rules across fields
        ({"search": {"default_k": 20, "max_k": 10}}, "search.max_k: must be >= search.default_k"),
        ({"search": {"max_image_bytes": 10**9}}, "search.max_request_bytes: must be >= search."),
        ({"evaluation": {"k": 500}}, "evaluation.candidates: must be >= evaluation.k"),
        (
            {"encoder": {"text_weight": 0, "image_weight": 0}},
            "encoder.text_weight: text_weight + image_weight must be > 0",
        ),
        (
            {"adapter": {"shown_negatives": 0, "random_negatives": 0}},
            "adapter.random_negatives: shown_negatives + random_negatives must be > 0",
        ),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text and "pydantic" not in text


def test_good_values_at_the_bounds_are_accepted():
    config = config_from_dict(
        {
            "encoder": {"text_weight": 0, "image_weight": 1},
            "search": {"ann_min_recall": 1, "port": 65535, "default_k": 7, "max_k": 7},
            "federation": {"delta_user": 0, "secagg_threshold": 1},
            "adapter": {"shown_negatives": 0},
        }
    )
    assert config.encoder.text_weight == 0.0 and config.search.max_k == 7
    assert config.federation.secagg_threshold == 1.0 and config.adapter.random_negatives == 32


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="^config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[search]\nmax_k = 5\n")
    with pytest.raises(ConfigError, match=r"^search\.max_k: must be >= search\.default_k"):
        load_config(typo)


def test_parse_override():
    assert parse_override("pretrain.lr=0.1") == {"pretrain": {"lr": 0.1}}
    assert parse_override("pretrain.steps=3") == {"pretrain": {"steps": 3}}
    assert parse_override("federation.dp=false") == {"federation": {"dp": False}}
    assert parse_override('encoder.model="a=b"') == {"encoder": {"model": "a=b"}}
    assert parse_override("paths.work_dir=/tmp/x") == {"paths": {"work_dir": "/tmp/x"}}
    assert parse_override("encoder.pretrained=none") == {"encoder": {"pretrained": "none"}}
    for bad in ("lr=0.1", "pretrain.lr"):
        with pytest.raises(ConfigError, match="section.key=value"):
            parse_override(bad)


def test_overrides_merge_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[search]\ndefault_k = 5\nmax_k = 50\n[federation]\nrounds = 7\n")
    config = load_config(path, parse_override("search.max_k=20"))
    assert (config.search.default_k, config.search.max_k) == (5, 20)
    assert config.federation.rounds == 7
    with pytest.raises(ConfigError, match=r"^search\.max_k: must be >= search\.default_k"):
        load_config(path, parse_override("search.max_k=4"))
    with pytest.raises(ConfigError, match=r"^search\.max_k: expected int, got str"):
        load_config(path, parse_override("search.max_k=many"))


def test_config_from_dict_merges_over_a_base():
    base = config_from_dict({"federation": {"rounds": 3, "dp": False}})
    config = config_from_dict({"federation": {"rounds": 4}}, base)
    assert config.federation.rounds == 4 and config.federation.dp is False
    assert base.federation.rounds == 3
    assert config_from_dict({}, base) == base


def test_configs_are_immutable_and_hashable():
    config = Config()
    with pytest.raises(ValidationError):
        config.pretrain.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.pretrain = config.pretrain  # type: ignore[misc]
    assert config.pretrain.lr == 2e-3
    changed = config_from_dict({"pretrain": {"lr": 1.0}})
    assert hash(config) == hash(Config()) and changed != config
    calls = []

    @functools.cache
    def use(c: Config) -> float:
        calls.append(c)
        return c.pretrain.lr

    assert (use(config), use(Config()), use(changed)) == (2e-3, 2e-3, 1.0)
    assert len(calls) == 2


def test_model_dump_round_trips():
    config = config_from_dict({"search": {"port": 9000}, "device": {"optimizer": "sgd"}})
    data = config.model_dump()
    assert data["search"]["port"] == 9000 and data["device"]["optimizer"] == "sgd"
    assert config_from_dict(data) == config
