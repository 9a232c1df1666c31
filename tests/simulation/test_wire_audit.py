"""The wire audit passes what the protocol allows and catches each way a device could leak.

Entries are built in the wiretap's format (``simulation.wiretap``): what a clean device
sends at each SecAgg+ stage, then the same with one leak planted.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import Key

from common.evaluation.protocol import device_user_vector
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE
from common.federation.x25519_keys import generate_key_pairs, public_key_to_bytes
from common.model.adapter import QueryAdapter
from simulation.synthetic import synthetic_population
from simulation.wire_audit import PrivateData, check_payloads, check_wire

DIM, RANK, CLIP = 16, 4, 1.0
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def population():
    return synthetic_population(3, n_items=40, dim=DIM, seed=1)


def _record(items, kind="config"):
    return {"kind": kind, "items": items}


def _public_key() -> bytes:
    return public_key_to_bytes(generate_key_pairs()[1])


def _masked() -> list[bytes]:
    values = RNG.integers(0, MODULUS, size=300, dtype=np.int64)
    return [ndarray_to_bytes(np.array([QUANTIZATION_RANGE])), ndarray_to_bytes(values)]


def clean_wire(node: int = 0) -> list[dict]:
    def entry(stage, configs, fit=None):
        records = {"secaggplus_configs": _record(configs)}
        records |= fit or {}
        return {"node": node, "type": "train", "stage": stage, "round": "1", "records": records}

    fit = {
        "fitres.parameters": _record({}, "arrays"),
        "fitres.metrics": _record({}, "metrics"),
        "fitres.num_examples": _record({"num_examples": 1}, "metrics"),
        "fitres.status": _record({"code": 0, "message": "Success"}),
    }
    return [
        entry("setup", {Key.PUBLIC_KEY_1: _public_key(), Key.PUBLIC_KEY_2: _public_key()}),
        entry("share_keys", {Key.DESTINATION_LIST: [1, 2], Key.CIPHERTEXT_LIST: [b"x" * 80] * 2}),
        entry("collect_masked_vectors", {Key.MASKED_PARAMETERS: _masked()}, fit),
        entry("unmask", {Key.NODE_ID_LIST: [1, 2], Key.SHARE_LIST: [b"s" * 40] * 2}),
    ]


def _codec() -> PayloadCodec:
    return PayloadCodec.for_weights(QueryAdapter(DIM, RANK).get_weights(), CLIP, 0.0625)


def clean_payload(node: int = 0) -> dict:
    update = [0.01 * RNG.standard_normal(w.shape) for w in QueryAdapter(DIM, RANK).get_weights()]
    payload = _codec().encode(update, {"trained": 1.0, "evaluated": 1.0, "base.hr": 0.5})
    records = {"fitres.parameters": _record({"0": payload}, "arrays")}
    return {"node": node, "type": "train", "stage": "", "round": "1", "records": records}


def test_a_clean_device_passes(population):
    private = PrivateData(population)
    assert check_wire(clean_wire(), private) == []
    assert check_payloads([clean_payload()], private, _codec()) == []


def _leaky(population, plant) -> list:
    entries = clean_wire()
    plant(entries, PrivateData(population))
    return check_wire(entries, PrivateData(population))


def test_a_clicked_item_in_a_metric_is_caught(population):
    clicked = population.devices[0].train[0].clicked

    def plant(entries, _):
        entries[2]["records"]["fitres.metrics"]["items"]["train_seconds"] = float(clicked)

    violations = _leaky(population, plant)
    assert [v.where for v in violations] == ["fitres.metrics"]


def test_the_user_vector_in_a_config_value_is_caught(population):
    user = device_user_vector(population.devices[0], population.item_vectors)

    def plant(entries, _):
        configs = entries[3]["records"]["secaggplus_configs"]["items"]
        configs[Key.SHARE_LIST] = [b"s" * 40, user.astype(np.float32).tobytes() + b"s" * 8]

    reasons = {v.reason for v in _leaky(population, plant)}
    assert "bytes carry private vectors" in reasons


def test_an_extra_key_and_a_public_key_swapped_for_data_are_caught(population):
    query = population.devices[0].train[0].query_vector

    def plant(entries, _):
        configs = entries[0]["records"]["secaggplus_configs"]["items"]
        configs[Key.PUBLIC_KEY_2] = np.asarray(query, dtype=np.float64).tobytes()
        configs["note"] = "hello"

    reasons = {v.reason for v in _leaky(population, plant)}
    assert {"not a public key", "a key the stage does not have"} <= reasons
    assert "bytes carry private vectors" in reasons


def test_an_unmasked_vector_on_the_wire_is_caught(population):
    def plant(entries, _):
        plain = RNG.integers(0, QUANTIZATION_RANGE, size=300, dtype=np.int64)
        entries[2]["records"]["secaggplus_configs"]["items"][Key.MASKED_PARAMETERS] = [
            ndarray_to_bytes(np.array([QUANTIZATION_RANGE])),
            ndarray_to_bytes(plain),
        ]

    reasons = {v.reason for v in _leaky(population, plant)}
    assert reasons == {"values not spread over the modulus: not masked"}


def test_a_message_the_protocol_does_not_have_is_caught(population):
    def plant(entries, _):
        extra = copy.deepcopy(entries[0])
        extra["type"], extra["stage"] = "evaluate", ""
        entries.append(extra)

    assert [v.reason for v in _leaky(population, plant)] == ["a message the protocol does not have"]


def test_the_user_vector_as_a_weight_column_is_caught(population):
    private = PrivateData(population)
    user = device_user_vector(population.devices[0], population.item_vectors)
    codec = _codec()
    weights = [np.zeros(w.shape) for w in QueryAdapter(DIM, RANK).get_weights()]
    weights[2][:, 1] = 0.2 * user  # up-projection (DIM, RANK): a column of length DIM
    entry = clean_payload()
    entry["records"]["fitres.parameters"]["items"]["0"] = codec.encode(weights, {})
    violations = check_payloads([entry], private, codec)
    assert [v.reason for v in violations] == ["a weight row or column is a private vector"]


def test_an_unclipped_or_oversized_payload_is_caught(population):
    private, codec = PrivateData(population), _codec()
    big = clean_payload()
    big["records"]["fitres.parameters"]["items"]["0"] *= 1000.0
    wrong = clean_payload()
    wrong["records"]["fitres.parameters"]["items"]["0"] = np.zeros(codec.size + 5)
    reasons = {v.reason for v in check_payloads([big, wrong], private, codec)}
    assert "update above the clipping norm" in reasons
    assert f"not one vector of {codec.size} values" in reasons
