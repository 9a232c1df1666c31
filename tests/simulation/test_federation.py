"""Federated simulations on Flower's Simulation Engine with a tiny synthetic population.

Two runs that differ only in the server's noise (sigma = 1 vs 0; clipping, SecAgg+ and
record-level DP on in both) are shared by the tests below.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.secaggplus_constants import Key
from opacus.accountants import RDPAccountant

from common.config import config_from_dict
from common.federation.run_spec import FIT_METRICS
from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.model.personalization import user_vector
from common.security.versions import list_versions, verify_files
from server.search.shoppers import FILE_NAME as SHOPPERS_FILE
from simulation.engine import simulate
from simulation.evaluation import evaluate_population
from simulation.report import write_report
from simulation.synthetic import synthetic_population
from simulation.wiretap import read_tap

DEVICES, ROUNDS, DIM, RANK = 4, 2, 16, 4
SIGMA, CLIP, PER_ROUND = 1.0, 0.05, 3
SECAGG_KEYS = {
    Key.PUBLIC_KEY_1,
    Key.PUBLIC_KEY_2,
    Key.DESTINATION_LIST,
    Key.CIPHERTEXT_LIST,
    Key.MASKED_PARAMETERS,
    Key.NODE_ID_LIST,
    Key.SHARE_LIST,
}
ADAPTER_SHAPES = [(RANK, DIM), (RANK,), (DIM, RANK), (DIM,)]


def _config(tmp, sigma):
    return config_from_dict(
        {
            "paths": {"work_dir": str(tmp / "work")},
            "adapter": {"rank": RANK, "shown_negatives": 4, "random_negatives": 4},
            "device": {"batch_size": 4, "epsilon_budget": 1000.0},
            "evaluation": {"candidates": 20},
            "federation": {
                "rounds": ROUNDS,
                "clients_per_round": PER_ROUND,
                "eval_devices": 2,
                "noise_multiplier": sigma,
                "clipping_norm": CLIP,
                "epsilon_user": 1000.0 if sigma else math.inf,
            },
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    population = synthetic_population(DEVICES, n_items=150, dim=DIM, seed=3)
    out = {"population": population}
    for name, sigma in (("noisy", SIGMA), ("quiet", 0.0)):
        tmp = tmp_path_factory.mktemp(name)
        taps = {"wire": tmp / "tap" / "wire", "plain": tmp / "tap" / "plain"}
        result = simulate(
            _config(tmp, sigma),
            "marketplace",
            population=population,
            run_dir=tmp / "run",
            wiretap=tmp / "tap",
        )
        out[name] = {"result": result, "taps": taps, "registry": tmp / "work" / "registry"}
    return out


def _private_vectors(population, node):
    device = population.devices[node]
    rows = [s.query_vector for s in device.train + device.test]
    rows += [population.item_vectors[s.clicked] for s in device.train + device.test]
    rows.append(user_vector(population.item_vectors[[s.clicked for s in device.train]]))
    return np.stack(rows)


def _contains_row(array: np.ndarray, rows: np.ndarray) -> bool:
    flat = np.asarray(array, dtype=np.float64).ravel()
    for row in rows:
        n = len(row)
        for start in range(len(flat) - n + 1):
            if np.allclose(flat[start : start + n], row, atol=1e-6):
                return True
    return False


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_devices_send_only_adapter_updates_counts_and_scalar_metrics(runs):
    population = runs["population"]
    item_ids = set(population.item_ids)
    queries = {s.query for d in population.devices for s in d.train + d.test}
    wire = read_tap(runs["noisy"]["taps"]["wire"])
    plain = read_tap(runs["noisy"]["taps"]["plain"])
    assert {e["type"] for e in wire} == {"get_parameters", "train", "evaluate"}
    assert {e["stage"] for e in wire if e["type"] == "train"} == {
        "setup",
        "share_keys",
        "collect_masked_vectors",
        "unmask",
    }
    for entry in wire + plain:
        private = _private_vectors(population, entry["node"])
        for name, record in entry["records"].items():
            for key, value in record["items"].items():
                if record["kind"] == "arrays":
                    assert name.endswith(".parameters")
                    assert value.shape in ADAPTER_SHAPES
                    assert not _contains_row(value, private), f"{name}.{key} holds private data"
                elif name == "fitres.metrics":
                    assert key in FIT_METRICS and isinstance(value, float)
                elif name == "evaluateres.metrics":
                    mode, total = key.split(".")
                    assert mode in ("base", "adapter", "personal")
                    assert total in ("count", "hr_sum", "ndcg_sum", "rr_sum")
                    assert isinstance(value, float)
                elif name.endswith((".num_examples", ".loss")):
                    assert isinstance(value, int | float)
                elif name.endswith(".status"):
                    assert key in ("code", "message")
                else:
                    assert name == "secaggplus_configs" and key in SECAGG_KEYS, (name, key)
                for text in _strings(value):
                    assert text not in item_ids and text not in queries
    # On the wire a training reply carries no plain weights: only the masked vector.
    masked = [e for e in wire if e["stage"] == "collect_masked_vectors"]
    assert masked and all(
        not e["records"]["fitres.parameters"]["items"]
        and e["records"]["fitres.num_examples"]["items"]["num_examples"] == 1
        for e in masked
    )
    # Before clipping and masking, the client's reply is a full adapter.
    fits = [e for e in plain if e["type"] == "train" and "fitres.parameters" in e["records"]]
    assert fits and all(
        [a.shape for a in e["records"]["fitres.parameters"]["items"].values()] == ADAPTER_SHAPES
        for e in fits
    )


def _version_weights(registry, number):
    folder = list_versions(registry)[number - 1]
    verify_files(folder)
    return QueryAdapter.load(folder / ADAPTER_FILE).get_weights()


def test_server_noise_is_real_and_has_the_promised_scale(runs):
    noisy = _version_weights(runs["noisy"]["registry"], 1)
    quiet = _version_weights(runs["quiet"]["registry"], 1)
    diff = np.concatenate([(a - b).ravel() for a, b in zip(noisy, quiet, strict=True)])
    expected_std = SIGMA * CLIP / PER_ROUND
    assert np.linalg.norm(diff) > 0
    # The rest of the two runs is identical (seeds); the difference is the server's noise
    # (plus SecAgg+ rounding, ~1e-6): N(0, (sigma C / m)^2) per coordinate.
    assert diff.std() == pytest.approx(expected_std, rel=0.25)

    torch.manual_seed(0)
    initial = QueryAdapter(DIM, RANK).get_weights()
    step = np.concatenate([(a - b).ravel() for a, b in zip(quiet, initial, strict=True)])
    participants = runs["quiet"]["result"].rounds[0]["fit"]["participants"]
    # Without noise the round moves the adapter by at most C * participants / m.
    assert 0 < np.linalg.norm(step) <= CLIP * participants / PER_ROUND * 1.001


def test_user_level_epsilon_grows_and_matches_opacus(runs):
    result = runs["noisy"]["result"]
    ledger = json.loads((result.run_dir / "privacy_ledger.json").read_text())
    q = PER_ROUND / DEVICES
    assert ledger["delta"] == pytest.approx(1 / DEVICES)
    epsilons = [e["epsilon"] for e in ledger["entries"]]
    assert len(epsilons) == ROUNDS and epsilons == sorted(epsilons) and epsilons[0] > 0
    for rounds, epsilon in enumerate(epsilons, start=1):
        accountant = RDPAccountant()
        for _ in range(rounds):
            accountant.step(noise_multiplier=SIGMA, sample_rate=q)
        assert epsilon == pytest.approx(accountant.get_epsilon(1 / DEVICES))
    assert [r["epsilon_user"] for r in result.rounds] == pytest.approx(epsilons)


def test_last_round_evaluates_every_device_consistently(runs):
    population = runs["population"]
    result = runs["noisy"]["result"]
    final = result.final["evaluate"]
    assert final["devices"] == DEVICES
    assert final["base.count"] == sum(len(d.test) for d in population.devices)
    config = result.spec.config.evaluation
    central = evaluate_population(population, beta=config.beta, candidates=config.candidates)
    for metric in ("HR@10", "nDCG@10", "MRR"):
        assert final[f"base.{metric}"] == pytest.approx(central.overall["base"][metric])


def test_report_files(runs):
    result = runs["noisy"]["result"]
    summary = write_report(
        result,
        runs["population"],
        {
            "base": {"HR@10": 0.5, "nDCG@10": 0.3, "MRR": 0.2, "count": 12.0},
            "centralized+personal": {"HR@10": 1.0, "nDCG@10": 0.99, "MRR": 0.9, "count": 12.0},
        },
    )
    for name in (
        "summary.json",
        "summary.md",
        "metrics.png",
        "epsilon.png",
        SHOPPERS_FILE,
        "metrics.jsonl",
        "privacy_ledger.json",
    ):
        assert (result.run_dir / name).is_file(), name
    assert summary["rounds"] == ROUNDS and summary["dp"] and summary["secagg"]
    assert "base" in summary["models"]
    final = result.final["evaluate"]
    base, personal = final["base.nDCG@10"], final["personal.nDCG@10"]
    share = (personal - base) / (0.99 - base)
    assert summary["share_of_centralized_gain"] == pytest.approx(share)
    assert f"= {share:.1%} of the centralized" in (result.run_dir / "summary.md").read_text()
    shoppers = json.loads((result.run_dir / SHOPPERS_FILE).read_text())
    assert len(shoppers["shoppers"]) == DEVICES and shoppers["dim"] == DIM
    assert len(list_versions(runs["noisy"]["registry"])) == ROUNDS
