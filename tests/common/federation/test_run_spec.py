"""The run spec both apps build from a Flower run config."""

from __future__ import annotations

import pytest

from common.config import Config, ConfigError
from common.federation.run_spec import RunSpec


def test_run_spec_from_a_flower_run_config(tmp_path):
    spec = RunSpec.from_run_config(
        {
            "population": "retail",
            "population-id": "shop-a",
            "base-model": "fedsearch-minilm-rn64:v0001:abc",
            "num-devices": 12,
            "embedding-dim": 32,
            "run-dir": str(tmp_path / "run"),
            "federation.rounds": 4,
            "federation.clients_per_round": 3,
            "device.local-epochs": 2,
            "federation.noise_multiplier": "",
        },
        run_id=7,
    )
    assert spec.population == "retail" and spec.num_devices == 12
    assert spec.ledger_name == "shop-a" and spec.embedding_dim == 32
    assert spec.config.federation.rounds == 4 and spec.config.device.local_epochs == 2
    assert spec.config.federation.noise_multiplier == Config().federation.noise_multiplier
    assert spec.sample_rate == pytest.approx(3 / 12) and spec.expected_devices == 3
    assert spec.delta_user == pytest.approx(0.1 / 12)
    assert spec.run_dir == tmp_path / "run"
    assert spec.base_model == "fedsearch-minilm-rn64:v0001:abc"
    default = RunSpec.from_run_config({"num-devices": 3, "base-model": "m"}, run_id=7)
    assert default.run_dir.name == "run-7" and default.population == "marketplace"
    assert default.ledger_name == "marketplace"


@pytest.mark.parametrize(
    ("run_config", "key"),
    [
        ({"num-devices": 3, "rounds": 2}, "rounds"),
        ({"num-devices": 3, "federation.nope": 1}, "federation.nope"),
        ({"num-devices": 1}, "num-devices"),
        ({"num-devices": 3, "population": "mall"}, "population"),
    ],
)
def test_run_spec_names_the_bad_key(run_config, key):
    with pytest.raises(ConfigError, match=key):
        RunSpec.from_run_config(run_config, run_id=1)
