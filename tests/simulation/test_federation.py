"""Federated simulations through ``flwr run`` with a small synthetic population.

One run with SecAgg+ and noise added by the devices (wiretaps on), and one with a fifth of
the devices dropping after they masked their vectors (clipping adaptively), are shared by
the tests below.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.model.adapter import QueryAdapter
from common.privacy.accounting import distributed_discrete_gaussian_rdp, epsilon_at
from common.security.versions import list_versions
from server.search.shoppers import FILE_NAME as SHOPPERS_FILE
from simulation.engine import simulate
from simulation.report import write_report
from simulation.synthetic import synthetic_population
from simulation.wire_audit import PrivateData, check_payloads, check_wire
from simulation.wiretap import read_tap
from tests.simulation.conftest import small_federation_config

DEVICES, ROUNDS, DIM, RANK = 12, 2, 96, 64  # payloads of 12,460 values
SIGMA, CLIP, PER_ROUND = 1.0, 0.5, 8


def _config(tmp, **federation):
    return small_federation_config(
        tmp,
        rank=RANK,
        rounds=ROUNDS,
        per_round=PER_ROUND,
        noise_multiplier=SIGMA,
        clipping_norm=CLIP,
        **federation,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    population = synthetic_population(DEVICES, n_items=150, dim=DIM, seed=3)
    out = {"population": population}
    tmp = tmp_path_factory.mktemp("noisy")
    result = simulate(
        _config(tmp), "marketplace", population=population, run_dir=tmp / "run", wiretap=tmp / "tap"
    )
    out["noisy"] = {"result": result, "tap": tmp / "tap", "registry": tmp / "work" / "registry"}
    tmp = tmp_path_factory.mktemp("dropout")
    result = simulate(
        _config(tmp, adaptive_clipping=True, clipping_ceiling=8 * CLIP, clipping_lr=2.0),
        "marketplace",
        population=population,
        run_dir=tmp / "run",
        wiretap=tmp / "tap",
        dropout=0.2,
        dropout_stages=("unmask",),
    )
    out["dropout"] = {"result": result, "tap": tmp / "tap"}
    return out


def _plan(result) -> PrivacyPlan:
    return PrivacyPlan.from_spec(result.spec)


def _codec(result) -> PayloadCodec:
    weights = QueryAdapter(DIM, RANK).get_weights()
    return PayloadCodec.for_weights(weights, CLIP, result.spec.config.federation.stats_share)


def test_devices_send_nothing_but_secagg_messages(runs):
    private = PrivateData(runs["population"])
    wire = read_tap(runs["noisy"]["tap"] / "wire")
    stages = {e["stage"] for e in wire}
    assert stages == {"setup", "share_keys", "collect_masked_vectors", "unmask"}
    assert check_wire(wire, private) == []
    plain = read_tap(runs["noisy"]["tap"] / "plain")
    assert check_payloads(plain, private, _codec(runs["noisy"]["result"])) == []
    assert sum(1 for e in plain if e["records"].get("fitres.parameters")) >= PER_ROUND


def _true_sums(plain_entries) -> dict[int, np.ndarray]:
    """Round -> sum of the payloads the devices handed SecAgg+ (inner taps)."""
    sums: dict[int, np.ndarray] = defaultdict(lambda: 0)
    for entry in plain_entries:
        record = entry["records"].get("fitres.parameters")
        if entry["type"] == "train" and record and record["items"]:
            payload = next(iter(record["items"].values()))
            sums[int(entry["round"])] = sums[int(entry["round"])] + payload.astype(np.float64)
    return dict(sums)


def test_the_sum_secagg_hands_the_server_already_carries_the_planned_noise(runs):
    run = runs["noisy"]
    plan, codec = _plan(run["result"]), _codec(run["result"])
    truth = _true_sums(read_tap(run["tap"] / "plain"))
    residuals, expected = [], []
    for round_number, total in truth.items():
        held = np.load(run["tap"] / "server" / f"round-{round_number}.npy")
        devices = run["result"].rounds[round_number - 1]["fit"]["devices"]
        residuals.append(held - total)
        sigma = plan.sigma_device(codec.size) * math.sqrt(devices) / plan.scale
        expected.append(np.full(codec.size, sigma))
    residual, sigma = np.concatenate(residuals), np.concatenate(expected)
    assert residual.size >= 10_000
    assert np.std(residual / sigma) == pytest.approx(1.0, rel=0.05)
    assert abs(np.mean(residual / sigma)) < 0.05


def _epsilon(plan: PrivacyPlan, size: int, rounds: int) -> float:
    l2 = plan.l2_sensitivity_units(size)
    rdp = distributed_discrete_gaussian_rdp(
        sample_rate=plan.sample_rate,
        sigma_device=plan.sigma_device(size),
        devices=plan.min_devices,
        l2_sensitivity=l2,
        l1_sensitivity=l2 * min(math.sqrt(size), l2),
        dim=size,
    )
    return epsilon_at(rounds * rdp, plan.delta)


def test_ledger_charges_each_round_at_the_plans_noise(runs):
    result = runs["noisy"]["result"]
    plan, size = _plan(result), _codec(result).size
    assert plan.delta == pytest.approx(0.1 / DEVICES)
    epsilons = [r["epsilon_user"] for r in result.rounds]
    assert epsilons == pytest.approx([_epsilon(plan, size, n) for n in (1, 2)])
    ledger = json.loads(
        next((result.spec.config.paths.work / "ledgers").glob("*.json")).read_text()
    )
    assert ledger["summary"]["rounds"] == ROUNDS and ledger["summary"]["unit"].startswith("user")
    manifest = json.loads(
        (list_versions(runs["noisy"]["registry"])[-1] / "manifest.json").read_text()
    )
    assert "unamplified" in manifest["privacy"]["against"]
    assert "seed" not in manifest["federation"]


def test_rounds_complete_when_a_fifth_drop_after_masking(runs):
    result = runs["dropout"]["result"]
    assert [r.get("dropped", False) for r in result.rounds] == [False] * ROUNDS
    assert sum(r["fit"]["failures"] for r in result.rounds) > 0
    plan, size = _plan(result), _codec(result).size
    # the noise was sized for the fewest survivors the plan accepts: epsilon as planned
    assert result.rounds[-1]["epsilon_user"] == pytest.approx(_epsilon(plan, size, ROUNDS))
    assert all(r["fit"]["devices"] >= plan.min_devices for r in result.rounds)


def test_adaptive_clipping_moves_the_norm_through_secagg_at_the_same_epsilon(runs):
    """The dropout run clips adaptively: each round's norm reaches the devices (their
    payloads are decoded and noised at it) and moves with the noised unclipped count; the
    ledger charges what a fixed norm would (the noise scales with the norm)."""
    result = runs["dropout"]["result"]
    norms = [r["fit"]["clipping_norm"] for r in result.rounds]
    shares = [r["fit"]["unclipped_share"] for r in result.rounds]
    moved = CLIP * math.exp(-2.0 * (shares[0] - 0.5))  # then kept in [ceiling / 64, ceiling]
    assert norms[0] == CLIP and norms[1] == pytest.approx(min(max(moved, CLIP / 8), 8 * CLIP))
    assert abs(norms[1] / norms[0] - 1) > 0.07  # far enough apart for the checks below
    run, plan = runs["dropout"], _plan(result)
    plain = [e for e in read_tap(run["tap"] / "plain") if e["records"].get("fitres.parameters")]
    for round_number, total in _true_sums(plain).items():
        at = plan.at_clipping(norms[round_number - 1])
        codec = PayloadCodec.for_plan(QueryAdapter(DIM, RANK).get_weights(), at)
        payloads = [
            next(iter(e["records"]["fitres.parameters"]["items"].values()))
            for e in plain
            if int(e["round"]) == round_number
        ]
        update_norms = [np.linalg.norm(p[: codec.update_size]) for p in payloads]
        assert max(update_norms) <= at.clipping_norm * (1 + 1e-4)  # clipped to it
        residual = np.load(run["tap"] / "server" / f"round-{round_number}.npy") - total
        sigma = at.sigma_device(codec.size) * math.sqrt(len(payloads)) / at.scale
        assert np.std(residual) / sigma == pytest.approx(1.0, rel=0.05)  # noised at it
    fixed = runs["noisy"]["result"].rounds
    assert [r["epsilon_user"] for r in result.rounds] == pytest.approx(
        [r["epsilon_user"] for r in fixed], rel=1e-9
    )


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
    for name in ("summary.json", "summary.md", "metrics.png", "epsilon.png", SHOPPERS_FILE):
        assert (result.run_dir / name).is_file(), name
    assert summary["rounds"] == ROUNDS and summary["dp"] and summary["secagg"]
    assert "holds against readers of published versions;" in summary["against"]
    shoppers = json.loads((result.run_dir / SHOPPERS_FILE).read_text())
    assert len(shoppers["shoppers"]) == DEVICES and shoppers["dim"] == DIM
