"""The promotion rule: a round's adapter is published once the next round found it not
worse than the served version, beyond the noise of the pooled evaluation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from common.config import ConfigError, config_from_dict
from common.federation.candidate import CANDIDATE_KEY, decode_candidate, encode_candidate
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from common.security.versions import list_versions, read_manifest
from server.federation.app import open_ledger
from server.federation.promotion import Standing, judge, pooled_gain
from server.federation.recorder import METRICS_FILE, RunRecorder
from server.federation.resume import ServerState, load_server_state, save_server_state
from server.federation.strategy import RoundLog


def _figures(personal: float, base: float = 0.30, noise: float = 0.0, evaluated: float = 20.0):
    return {
        "devices": 20.0,
        "trained": 20.0,
        "evaluated": evaluated,
        "stats_noise_std": noise,
        "base.nDCG@10": base,
        "personal.nDCG@10": personal,
    }


def _recorder(tmp_path, log: RoundLog, promote="if-not-worse") -> RunRecorder:
    settings = {"clients_per_round": 20, "epsilon_user": 50.0}
    config = config_from_dict({"paths": {"work_dir": str(tmp_path)}, "federation": settings})
    spec = RunSpec(config, "retail", 100, tmp_path / "run", population_id="shop")
    plan = PrivacyPlan.from_spec(spec)
    ledger = open_ledger(spec, plan)
    return RunRecorder(spec, plan, log, ledger, payload_size=1000, promote=promote)


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=w.shape).astype(np.float32) for w in QueryAdapter(8, 2).get_weights()]


def test_pooled_gain_and_its_noise():
    gain, std = pooled_gain(_figures(0.40, noise=2.0, evaluated=10.0), 10)
    assert gain == pytest.approx(0.10) and std == pytest.approx(np.sqrt(2) * 0.2)
    assert pooled_gain(_figures(0.40, evaluated=0.4), 10) is None  # nobody evaluated
    gain, _ = pooled_gain(_figures(1.9, base=-0.2, noise=9.0, evaluated=3.0), 10)
    assert gain == pytest.approx(1.0)  # noised means outside [0, 1] are clamped back
    assert pooled_gain({"trained": 3.0}, 10) is None


def test_judge_refuses_only_what_is_worse_beyond_the_noise():
    served = Standing("v0003", gain=0.10, std=0.01)
    assert judge(0.12, 0.01, served, margin_sd=2.0).promote
    assert judge(0.09, 0.01, served, margin_sd=2.0).promote  # within noise
    verdict = judge(0.05, 0.01, served, margin_sd=2.0)
    assert not verdict.promote and "worse than v0003" in verdict.reason
    assert not judge(0.099, 0.0, Standing("v0001", 0.10, 0.0), margin_sd=2.0).promote
    assert judge(-0.5, 1.0, Standing(), margin_sd=2.0).promote  # noise too large to tell
    drifted = Standing("v0002", gain=-0.3, std=0.2)  # promoted within noise, below base
    verdict = judge(-0.5, 0.1, drifted, margin_sd=2.0)  # near v0002, far below base
    assert not verdict.promote and "worse than base" in verdict.reason


def test_a_candidate_waits_for_its_evaluation_and_a_worse_one_is_kept_back(tmp_path):
    log = RoundLog()
    recorder = _recorder(tmp_path, log)
    registry = recorder.spec.config.paths.registry
    log.fit[1] = _figures(0.30)  # nothing evaluated yet: base again
    entry = recorder.record(1, _weights(1))
    assert entry["candidate"] == 1 and "published" not in entry and not list_versions(registry)
    assert recorder.evaluating is not None  # round 2's devices evaluate round 1's adapter

    log.fit[2] = _figures(0.36)  # round 1's adapter: +0.06 over base
    entry = recorder.record(2, _weights(2))
    (v1,) = list_versions(registry)
    manifest = read_manifest(v1)
    assert entry["published"] == str(v1) and manifest["round"] == 1
    assert manifest["evaluation"]["gain"] == pytest.approx(0.06)
    assert "not worse than base" in manifest["evaluation"]["verdict"]
    np.testing.assert_array_equal(
        QueryAdapter.load(v1 / "adapter.safetensors").get_weights()[0],
        recorder.average.average[0] if recorder.average else _weights(1)[0],
    )

    log.fit[3] = _figures(0.31)  # round 2's adapter: +0.01, clearly below v0001's +0.06
    entry = recorder.record(3, _weights(3))
    assert "worse than v0001" in entry["not_promoted"] and len(list_versions(registry)) == 1
    lines = [
        json.loads(x) for x in (recorder.spec.run_dir / METRICS_FILE).read_text().split("\n") if x
    ]
    assert [("published" in x, "not_promoted" in x) for x in lines] == [
        (False, False),
        (True, False),
        (False, True),
    ]


def test_always_publishes_each_round_at_once(tmp_path):
    log = RoundLog(fit={1: _figures(0.30), 2: _figures(0.10)})
    recorder = _recorder(tmp_path, log, promote="always")
    recorder.record(1, _weights(1))
    recorder.record(2, _weights(2))
    assert [
        read_manifest(v)["round"] for v in list_versions(recorder.spec.config.paths.registry)
    ] == [1, 2]


def test_auto_promotes_if_not_worse_when_deployed_and_always_in_simulations():
    federation = config_from_dict({}).federation
    assert federation.promotion_rule(simulated=False) == "if-not-worse"
    assert federation.promotion_rule(simulated=True) == "always"


def test_if_not_worse_needs_federated_evaluation():
    with pytest.raises(ConfigError, match="federation.promote"):
        config_from_dict({"federation": {"stats_share": 0.0, "promote": "if-not-worse"}})
    unevaluated = config_from_dict({"federation": {"stats_share": 0.0}}).federation
    with pytest.raises(ConfigError, match="stats_share = 0"):
        unevaluated.promotion_rule(simulated=False)
    assert unevaluated.promotion_rule(simulated=True) == "always"


def test_the_candidate_travels_as_npz_without_pickles():
    weights = _weights(5)
    back = decode_candidate({CANDIDATE_KEY: encode_candidate(weights)})
    assert all(np.array_equal(a, b) for a, b in zip(back, weights, strict=True))
    assert decode_candidate({}) is None
    buffer = io.BytesIO()
    np.savez(buffer, np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        decode_candidate({CANDIDATE_KEY: buffer.getvalue()})
    with pytest.raises(ValueError, match=CANDIDATE_KEY):
        decode_candidate({CANDIDATE_KEY: "not bytes"})


def test_the_pending_candidate_survives_a_restart(tmp_path):
    log = RoundLog(fit={1: _figures(0.30)})
    recorder = _recorder(tmp_path, log)
    recorder.record(1, _weights(1))
    state = ServerState(
        round=1,
        weights=_weights(9),
        velocity=None,
        average=None,
        rng_position=0,
        evaluating=recorder.evaluating,
        pending=recorder.pending,
        standing=Standing("v0007", 0.05, 0.01),
    )
    save_server_state(tmp_path, state)
    back = load_server_state(tmp_path)
    assert back.pending.round == 1 and back.pending.figures == _figures(0.30)
    assert np.array_equal(back.pending.weights[0], recorder.pending.weights[0])
    assert back.standing == Standing("v0007", 0.05, 0.01)
