import base64
from pathlib import Path

import numpy as np
import pytest

from client.device import (
    DeviceInfo,
    import_searches,
    init_device,
    load_public_items,
    save_public_items,
    training_data,
)
from client.store import KEY_ENV, generate_key
from common.cli import main
from common.data.searches import DeviceData, SearchExample
from common.privacy.accounting import ORDERS
from common.security.pki import create_ca
from common.security.signing import generate_signing_key

DIM = 6


@pytest.fixture()
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    create_ca(tmp_path / "ca.crt", tmp_path / "ca.key", "test CA")
    generate_signing_key(tmp_path / "s.key", tmp_path / "s.pub")
    return init_device(
        tmp_path / "dev",
        DeviceInfo("dev", "127.0.0.1:9092"),
        ca_cert=tmp_path / "ca.crt",
        signing_pub=tmp_path / "s.pub",
    )


def _history(rng: np.random.Generator, n: int, items: int) -> DeviceData:
    searches = [
        SearchExample(
            rng.standard_normal(DIM).astype(np.float32),
            shown := rng.choice(items, size=3, replace=False),
            int(shown[1]),
            f"query {i}",
        )
        for i in range(n)
    ]
    return DeviceData("customer-1", searches[: n - 2], searches[n - 2 :])


def test_import_then_training_data_round_trips(device) -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(10)]
    vectors = rng.standard_normal((10, DIM)).astype(np.float32)
    history = _history(rng, 10, 10)
    save_public_items(device, ids, vectors)
    assert load_public_items(device)[0] == ids
    assert import_searches(device, history, ids, vectors) == 10

    data, got_ids, got_vectors = training_data(device, holdout_fraction=0.2)
    assert got_ids == ids
    np.testing.assert_array_equal(got_vectors, vectors)
    original = [*history.train, *history.test]
    restored = [*data.train, *data.test]
    assert (len(data.train), len(data.test)) == (8, 2)  # the last 20% held out
    for a, b in zip(original, restored, strict=True):
        assert a.clicked == b.clicked and a.query == b.query
        np.testing.assert_array_equal(a.shown, b.shown)
        np.testing.assert_array_equal(a.query_vector, b.query_vector)


def test_items_missing_from_public_file_come_from_the_log(device) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, DIM)).astype(np.float32)
    store = device.open_store()
    entry = store.log_search("q", vectors[0], ["a", "b"], vectors[:2])
    store.log_click(entry.search_id, "b")
    store.log_search("unclicked", vectors[0], ["c"], vectors[2:3])  # no click: not training data
    data, ids, table = training_data(device, holdout_fraction=0.2)
    assert ids == ["a", "b"] and len(data.train) == 1 and data.test == []
    np.testing.assert_array_equal(table, vectors[:2])
    assert data.train[0].clicked == 1


def test_wrong_key_in_env_is_a_one_line_cli_error(device, monkeypatch, capsys) -> None:
    assert main(["device", "budget", str(device.folder)]) == 0
    monkeypatch.setenv(KEY_ENV, base64.b64encode(generate_key()).decode())
    assert main(["device", "budget", str(device.folder)]) == 2
    assert "wrong store key" in capsys.readouterr().err


def _init_args(tmp_path: Path, folder: str) -> list[str]:
    return [
        "device", "init", str(tmp_path / folder), "--superlink", "127.0.0.1:9092",
        "--ca", str(tmp_path / "ca.crt"), "--signing-key", str(tmp_path / "s.pub"),
    ]  # fmt: skip


def test_init_writes_the_device_s_own_policy_and_the_policy_refuses(
    device, tmp_path, capsys
) -> None:
    from client.device import Device
    from client.privacy import DevicePolicy, PolicyRefusal
    from common.config import config_from_dict
    from common.federation.privacy_plan import PrivacyPlan
    from common.federation.run_spec import RunSpec

    strict = [
        *_init_args(tmp_path, "strict"),
        "--max-epsilon-user",
        "2",
        "--max-clipping-norm",
        "0.5",
    ]
    assert main(strict) == 0
    assert "epsilon_user <= 2" in capsys.readouterr().out
    settings = Device(tmp_path / "strict").device_config()
    assert (settings.max_epsilon_user, settings.max_clipping_norm) == (2.0, 0.5)
    assert settings.require_secagg  # options not given keep their defaults
    config = config_from_dict({"federation": {"epsilon_user": 4.0, "clipping_norm": 0.5}})
    plan = PrivacyPlan.from_spec(RunSpec(config, "marketplace", 100, tmp_path))
    with pytest.raises(PolicyRefusal, match="epsilon_user 4, above the device's maximum 2"):
        DevicePolicy.from_config(settings).check(plan)

    assert main([*_init_args(tmp_path, "bad"), "--max-epsilon-user", "-1"]) == 2
    assert "device.max_epsilon_user" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing written for a bad policy


def test_budget_prints_the_servers_view_of_the_devices_rounds(device, capsys) -> None:
    from client.privacy import SERVER_VIEW_KEY, ServerView

    assert main(["device", "budget", str(device.folder)]) == 0
    assert "against the server: epsilon 0.000 after 0 rounds" in capsys.readouterr().out
    rdp = np.asarray(ORDERS, dtype=np.float64) / (2 * 1.2**2)  # one unamplified round, z 1.2
    view = ServerView.from_info({}).after(rdp, 1e-4)

    def charge(state):
        state.info[SERVER_VIEW_KEY] = view.to_info()
        return state

    device.open_store().update_state(charge)
    assert main(["device", "budget", str(device.folder)]) == 0
    out = capsys.readouterr().out
    assert "against the server: epsilon 3.38" in out and "after 1 rounds" in out
    assert "(at most 10;" in out
