"""A real device reads its own config only: a hostile run config cannot change its data,
its privacy policy or budget, nor make it read another file of its disk."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from client.app import device_run_config
from client.device import DeviceInfo, import_searches, init_device, save_public_items
from client.local_device import stored_device
from client.store import KEY_ENV
from common.data.searches import DeviceData, SearchExample
from common.federation.run_spec import RunSpec
from common.security.pki import create_ca
from common.security.signing import generate_signing_key

DIM = 6
_opened: list[str] = []
_watching: list[Path] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _watching and isinstance(args[0], (str, Path)):
        path = str(args[0])
        if any(path.startswith(str(root)) for root in _watching):
            _opened.append(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only while watching


def _device(tmp_path: Path, name: str, max_epsilon_user: float):
    create_ca(tmp_path / "ca.crt", tmp_path / "ca.key", "test CA")
    generate_signing_key(tmp_path / "s.key", tmp_path / "s.pub")
    device = init_device(
        tmp_path / name,
        DeviceInfo(name, "127.0.0.1:9092"),
        ca_cert=tmp_path / "ca.crt",
        signing_pub=tmp_path / "s.pub",
        policy={"max_epsilon_user": max_epsilon_user, "epsilon_budget": 3.0},
    )
    rng = np.random.default_rng(len(name))
    ids = [f"i{n}" for n in range(8)]
    vectors = rng.standard_normal((8, DIM)).astype(np.float32)
    searches = [
        SearchExample(rng.standard_normal(DIM).astype(np.float32), np.array([0, 1, 2]), 1, "q")
        for _ in range(6)
    ]
    save_public_items(device, ids, vectors)
    import_searches(device, DeviceData(name, searches[:5], searches[5:]), ids, vectors)
    return device


@pytest.fixture()
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    mine = _device(tmp_path / "mine", "dev1", max_epsilon_user=2.0)
    other = tmp_path / "elsewhere"
    other.mkdir()
    config_file = other / "hostile.toml"
    config_file.write_text(
        f"[device]\nmax_epsilon_user = 1e9\nepsilon_budget = 1e9\ndp = false\n"
        f'[paths]\ndata_dir = "{other}"\nwork_dir = "{other}"\nencoder_dir = "{other}"\n'
    )
    run_config = {
        "population": "retail",
        "num-devices": 3,
        "config-file": str(config_file),
        "run-dir": str(other),
        "base-model": "",
        "paths.work_dir": str(other),
        "device.max_epsilon_user": 1e9,
        "device.require_secagg": False,
        "device.epsilon_budget": 1e9,
        "federation.rounds": 2,
    }
    return mine, other, run_config


def test_a_hostile_run_config_changes_nothing_the_device_decides(hostile):
    mine, other, run_config = hostile
    _watching[:] = [other]
    try:
        spec = RunSpec.from_run_config(device_run_config(run_config), run_id=1)
        local = stored_device(spec, {"device-dir": str(mine.folder)})
    finally:
        _watching.clear()
    assert _opened == []  # neither the config file nor anything under run-dir / paths.*
    assert local.config == mine.device_config()
    assert local.policy.max_epsilon_user == 2.0 and local.config.epsilon_budget == 3.0
    assert local.policy.require_secagg
    assert len(local.data.train) + len(local.data.test) == 6  # its own store
    assert spec.config.federation.rounds == 2  # what devices share with the server still counts


def test_without_the_filter_the_run_config_would_reach_the_device_s_disk(hostile):
    """The check above can fail: the unfiltered run config makes the device open the file."""
    _, other, run_config = hostile
    _watching[:] = [other]
    try:
        spec = RunSpec.from_run_config({**run_config, "base-model": "x"}, run_id=1)
    finally:
        _watching.clear()
    assert str(other / "hostile.toml") in _opened
    assert spec.config.device.max_epsilon_user == 1e9
