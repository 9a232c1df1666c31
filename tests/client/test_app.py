"""The device's Flower client: one payload out, private state kept, candidate evaluated."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from client.adapter_client import AdapterClient
from client.local_device import LocalDevice
from client.privacy import PolicyRefusal, ServerView
from client.store import DeviceStore
from common.config import config_from_dict
from common.federation.candidate import CANDIDATE_KEY, encode_candidate
from common.federation.payload import STATS, UNCLIPPED, PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from common.privacy.accounting import epsilon_at
from simulation.synthetic import synthetic_population

DIM, RANK, CLIP = 16, 4, 0.5


@pytest.fixture(scope="module")
def population():
    return synthetic_population(3, n_items=120, dim=DIM, train_searches=10, test_searches=3)


def _config(**device):
    return config_from_dict(
        {
            "adapter": {"rank": RANK, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "epsilon_budget": 1000.0, **device},
            "evaluation": {"candidates": 20},
            "federation": {"clipping_norm": CLIP},
        }
    )


def _client(tmp_path, population, config):
    spec = RunSpec(config, "marketplace", len(population.devices), tmp_path)
    store = DeviceStore(tmp_path / "store", b"k" * 32)
    device = LocalDevice(
        population.devices[0],
        population.item_vectors,
        store,
        config.device,
        seed_parts=(0, 0),
    )
    return AdapterClient(device, spec), store


def _codec(config):
    weights = QueryAdapter(DIM, RANK).get_weights()
    return PayloadCodec.for_weights(weights, CLIP, config.federation.stats_share)


def test_fit_sends_one_clipped_payload_weight_one_and_no_metrics(tmp_path, population):
    config = _config()
    client, store = _client(tmp_path, population, config)
    weights = QueryAdapter(DIM, RANK).get_weights()
    sent, weight, metrics = client.fit(weights, {"round": 1})
    assert weight == 1 and metrics == {}
    assert len(sent) == 1 and sent[0].shape == (_codec(config).size,)
    update, stats = _codec(config).decode(sent[0])
    assert np.linalg.norm(np.concatenate([u.ravel() for u in update])) <= CLIP * (1 + 1e-5)
    assert stats["trained"] == pytest.approx(1.0) and stats["declined"] == pytest.approx(0.0)
    assert stats["evaluated"] == pytest.approx(1.0) and set(stats) == set(STATS)
    # no candidate sent: the "adapter" is the base encoder
    assert stats["adapter.rr"] == pytest.approx(stats["base.rr"], abs=1e-6)
    state = store.load_state()
    assert state.info["rounds_trained"] == 1 and state.user_vector is not None


def test_a_declining_device_sends_a_zero_update_counted_as_declined(tmp_path, population):
    config = _config(dp=True, noise_multiplier=1.0)
    client, store = _client(tmp_path, population, config)
    weights = QueryAdapter(DIM, RANK).get_weights()
    client.fit(weights, {"round": 1})
    spent = store.load_state().accountant
    tight = _config(dp=True, noise_multiplier=1.0, epsilon_budget=1e-3)
    client, _ = _client(tmp_path, population, tight)
    sent, _, _ = client.fit(weights, {"round": 2})
    update, stats = _codec(tight).decode(sent[0])
    assert not any(u.any() for u in update)
    assert stats["declined"] == pytest.approx(1.0) and stats["trained"] == pytest.approx(0.0)
    assert store.load_state().accountant == spent


def test_the_device_evaluates_the_candidate_the_server_sends(tmp_path, population):
    adapter = QueryAdapter(DIM, RANK)
    adapter.up.weight.data.normal_(0, 0.5)  # a candidate that ranks differently from base
    client, _ = _client(tmp_path, population, _config())
    config = {"round": 2, CANDIDATE_KEY: encode_candidate(adapter.get_weights())}
    sent, _, _ = client.fit(QueryAdapter(DIM, RANK).get_weights(), config)
    _, stats = _codec(_config()).decode(sent[0])
    assert stats["adapter.rr"] != pytest.approx(stats["base.rr"], abs=1e-6)


def test_a_crafted_candidate_moves_no_more_than_the_payload_bound(tmp_path, population):
    """The evaluation attack: a server sends a candidate that maps every query to one item's
    vector, hoping that a device's reciprocal rank tells whether it clicked that item. The
    statistics do change (the device evaluates what it is sent), but they stay inside the
    clipped payload, so what the noised sum reveals about any one device is bounded by the
    round's DP like its update (under SecAgg+, against the server)."""
    config = _config()
    crafted = QueryAdapter(DIM, RANK)
    target = population.item_vectors[0]
    crafted.down.weight.data.zero_()
    crafted.down.bias.data.zero_()
    crafted.down.bias.data[0] = 1.0  # every query gets the same hidden unit...
    crafted.up.weight.data.zero_()
    crafted.up.weight.data[:, 0] = 100.0 * torch.as_tensor(target)  # ...sent to the target
    codec = _codec(config)
    bound = CLIP * np.sqrt(1.0 + config.federation.stats_share)
    honest = QueryAdapter(DIM, RANK).get_weights()
    sent = {}
    for name, candidate in (("honest", honest), ("crafted", crafted.get_weights())):
        client, _ = _client(tmp_path / name, population, config)
        fit_config = {"round": 1, CANDIDATE_KEY: encode_candidate(candidate)}
        payload = client.fit(honest, fit_config)[0][0]
        assert np.linalg.norm(payload) <= bound * (1 + 1e-5)
        sent[name] = codec.decode(payload)[1]
    assert sent["crafted"]["adapter.rr"] != pytest.approx(sent["honest"]["adapter.rr"])
    assert all(0.0 <= value <= 1.0 + 1e-6 for value in sent["crafted"].values())


def test_an_adaptive_round_clips_to_the_norm_it_names_and_reports_whether_it_fit(
    tmp_path, population
):
    config = config_from_dict(
        {"federation": {"adaptive_clipping": True, "clipping_ceiling": 64 * 0.01}}, _config()
    )
    client, _ = _client(tmp_path, population, config)
    weights = QueryAdapter(DIM, RANK).get_weights()
    for norm, fits in ((0.01, 0.0), (0.64, 1.0)):
        sent, _, _ = client.fit(weights, {"round": 1, "clipping_norm": norm})
        shapes = tuple(w.shape for w in weights)
        codec = PayloadCodec(norm, config.federation.stats_share, shapes, (*STATS, UNCLIPPED))
        update, stats = codec.decode(sent[0])
        flat = np.concatenate([u.ravel() for u in update])
        assert np.linalg.norm(flat) <= norm * (1 + 1e-5)
        assert stats["unclipped"] == pytest.approx(fits)
    with pytest.raises(PolicyRefusal, match="outside"):
        client.fit(weights, {"round": 2, "clipping_norm": 1.0})


def test_the_clientapp_module_imports_neither_torch_nor_opacus():
    """Flower starts a ClientApp process per message: the SecAgg+ stages start light."""
    script = "import sys, client.app; print(sorted({'torch', 'opacus'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_servers_view_of_the_device_is_accounted_and_capped(tmp_path, population):
    """The ledger's sampling amplification does not hold against the server, which knows
    whom it sampled: the device charges itself each round unamplified, and declines (an
    empty payload, no evaluation) once one more round would pass its own cap."""
    client, store = _client(tmp_path, population, _config())
    weights = QueryAdapter(DIM, RANK).get_weights()
    client.fit(weights, {"round": 1})
    plan, size = PrivacyPlan.from_spec(client.spec), _codec(_config()).size
    one = replace(plan, sample_rate=1.0).round_rdp(size)
    view = ServerView.from_info(store.load_state().info)
    assert view.rounds == 1 and view.epsilon() == pytest.approx(epsilon_at(one, plan.delta))
    two = epsilon_at(2 * one, plan.delta)
    capped = _config(max_epsilon_server=(view.epsilon() + two) / 2)  # room for one round
    client, _ = _client(tmp_path, population, capped)
    sent, _, _ = client.fit(weights, {"round": 2})
    update, stats = _codec(capped).decode(sent[0])
    assert not any(u.any() for u in update)
    assert stats["declined"] == pytest.approx(1.0) and stats["evaluated"] == 0.0
    assert ServerView.from_info(store.load_state().info).rounds == 1


def test_without_the_devices_noise_the_server_view_is_not_charged(tmp_path, population):
    config = config_from_dict(
        {
            "adapter": {"rank": RANK, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "epsilon_budget": 1000.0, "require_noise": False},
            "federation": {"clipping_norm": CLIP, "noise": "server"},
        }
    )
    client, store = _client(tmp_path, population, config)
    client.fit(QueryAdapter(DIM, RANK).get_weights(), {"round": 1})
    assert ServerView.from_info(store.load_state().info).rounds == 0
