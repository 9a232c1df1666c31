"""``fedsearch device sync`` and the device's own copy of the model: fetched from the search
service, verified on the device; a refused copy is reported to the SDK's caller, never
replaced by the service's scores in silence."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from client.device import BASE_MODEL_INFO, DeviceInfo, init_device
from client.sdk import DeviceClient, DeviceModelError, verified_adapters
from client.store import KEY_ENV
from client.sync import sync_device
from common.cli import main
from common.config import config_from_dict
from common.model.adapter import QueryAdapter
from common.security.signing import load_private_key, signer
from server.deploy.layout import DeploymentInfo, init_deployment
from server.federation.publish import publish_adapter
from tests.server.search.conftest import running_server

CANDIDATES = 8


@pytest.fixture
def setup(tmp_path, monkeypatch, small_catalog, untrained_encoder):
    """(service TestClient, service registry, device, signing key) over 40 catalog items."""
    from server.search.catalog_build import build_catalog, fashion_items
    from server.search.service import create_app

    monkeypatch.delenv(KEY_ENV, raising=False)
    link = small_catalog.parent / "fashion_product_images_small_subset"
    if not link.exists():
        link.symlink_to(small_catalog)
    dep = init_deployment(tmp_path / "deploy", DeploymentInfo())
    config = config_from_dict(
        {
            "paths": {"data_dir": str(small_catalog.parent), "work_dir": str(tmp_path / "w")},
            "search": {"candidates": CANDIDATES, "public_key": str(dep.signing_pub)},
        }
    )
    catalog = build_catalog(config, untrained_encoder, fashion_items(config), progress=False)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    device = init_device(
        tmp_path / "dev1",
        DeviceInfo("dev1", dep.info.address),
        ca_cert=dep.ca_cert,
        signing_pub=dep.signing_pub,
    )
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        yield client, config.paths.registry, device, load_private_key(dep.signing_key)


def _publish(registry, key, seed: int):
    torch.manual_seed(seed)
    adapter = QueryAdapter(384, 4)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    return publish_adapter(registry, adapter.get_weights(), {"round": seed}, finalize=signer(key))


def test_sync_fetches_verifies_and_a_refused_copy_is_reported(setup, capsys) -> None:
    client, registry, device, key = setup
    url = str(client.base_url).rstrip("/")
    _publish(registry, key, 1), _publish(registry, key, 2)
    assert client.get("/models").json()["versions"] == ["v0001", "v0002"]
    assert client.get("/models/v0001/../../deploy/ca/ca.key").status_code == 404
    result = sync_device(device, url)
    assert result.fetched == ["v0001", "v0002"] and result.held == "v0002" and not result.refused
    assert sync_device(device, url).fetched == []

    def search(model):
        store = device.open_store()
        with DeviceClient(url, store, candidates=CANDIDATES, model=model) as sdk:
            return sdk.search(text="blue shirt", k=3)

    mark = device.folder / "adapter-version.json"
    results = search(verified_adapters(device.registry_dir, _pub(device), state_file=mark))
    assert results.scored_by == "device:v0002" and results.model_error is None

    adapter = device.registry_dir / "v0002" / "adapter.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0x01  # one byte of the device's copy flipped
    adapter.write_bytes(bytes(data))
    with pytest.raises(DeviceModelError, match="v0002.*sha256|sha256.*v0002"):
        search(verified_adapters(device.registry_dir, _pub(device), state_file=mark))

    result = sync_device(device, url)  # fetched again
    assert result.fetched == ["v0002"] and result.held == "v0002" and not result.refused
    results = search(verified_adapters(device.registry_dir, _pub(device), state_file=mark))
    assert results.scored_by == "device:v0002"
    assert np.isfinite([h.score for h in results.hits]).all()

    _publish(registry, key, 3)
    assert main(["device", "sync", str(device.folder), "--from", str(registry)]) == 0
    assert "fetched v0003; holds v0003" in capsys.readouterr().out
    (device.registry_dir / "v0003" / "manifest.json").write_text("{}")  # altered: dropped
    assert main(["device", "sync", str(device.folder), "--from", url]) == 0
    capsys.readouterr()
    assert main(["device", "search", str(device.folder), "blue shirt", "--endpoint", url]) == 0
    out = capsys.readouterr().out
    assert "scored by device:v0003 (the service serves base)" in out and "  3. " in out


def test_a_service_without_versions_scores_and_says_so(setup) -> None:
    client, _, device, _ = setup
    model = verified_adapters(device.registry_dir, _pub(device))
    url = str(client.base_url).rstrip("/")
    with DeviceClient(url, device.open_store(), candidates=CANDIDATES, model=model) as sdk:
        assert sdk.search(text="watch", k=2).scored_by == "service"


def _pub(device):
    from common.security.signing import load_public_key

    return load_public_key(device.signing_pub)


def test_a_version_of_another_encoder_is_refused_on_the_device(setup) -> None:
    client, registry, device, key = setup
    url = str(client.base_url).rstrip("/")
    weights = QueryAdapter(384, 4).get_weights()
    publish_adapter(registry, weights, {"round": 1, "base_model": "enc:A"}, finalize=signer(key))

    def recorded(encoder):
        def update(state):
            state.info[BASE_MODEL_INFO] = encoder
            return state

        return update

    device.open_store().update_state(recorded("enc:B"))
    result = sync_device(device, url)
    assert result.held == "" and "'enc:A'" in result.refused and "'enc:B'" in result.refused
    device.open_store().update_state(recorded("enc:A"))
    assert sync_device(device, url).held == "v0001"
