"""The server state saved after each round, and where a resumed run starts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from common.config import ConfigError
from common.privacy.accounting import gaussian_rdp
from server.federation.ledger import PopulationLedger
from server.federation.recorder import METRICS_FILE
from server.federation.resume import (
    ServerState,
    check_resumable,
    load_server_state,
    resume_point,
    save_server_state,
)


def _state(round_number: int, *, average: bool) -> ServerState:
    rng = np.random.default_rng(round_number)
    weights = [rng.standard_normal((4, 2)).astype(np.float32), rng.standard_normal(3)]
    return ServerState(
        round=round_number,
        weights=weights,
        velocity=None,
        average=[w * 0.5 for w in weights] if average else None,
        rng_position=123 * round_number,
        clipping_norm=1.5 if average else None,  # adaptive clipping's norm, when it runs
    )


@pytest.mark.parametrize("average", [True, False])
def test_the_server_state_round_trips(tmp_path, average):
    assert load_server_state(tmp_path) is None
    state = _state(2, average=average)
    save_server_state(tmp_path, state)
    loaded = load_server_state(tmp_path)
    assert loaded.round == 2 and loaded.rng_position == 246 and loaded.velocity is None
    saved, back = state.weights + (state.average or []), loaded.weights + (loaded.average or [])
    for a, b in zip(saved, back, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert (loaded.average is None) == (not average)
    assert loaded.clipping_norm == state.clipping_norm


def test_resume_cuts_the_metrics_back_and_names_rounds_charged_twice(tmp_path, caplog):
    rows = [json.dumps({"round": r, "fit": {}}) for r in (1, 2, 3)]
    (tmp_path / METRICS_FILE).write_text("\n".join(rows) + '\n{"round": 4, "fi')  # cut short
    save_server_state(tmp_path, _state(2, average=False))  # killed before saving round 3
    ledger = PopulationLedger(tmp_path / "ledger.json", delta=1e-5, epsilon_budget=10)
    for r in (1, 2, 3, 4):
        ledger.charge(run="run-1", round_number=r, mechanism={}, rdp=gaussian_rdp(0.1, 1.0))
    with caplog.at_level(logging.WARNING):
        state = resume_point(tmp_path, "run-1", ledger)
    assert state.round == 2
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert "rounds [3, 4] were charged but not recorded" in caplog.text
    assert ledger.rounds == 4  # they stay charged


def test_resume_without_a_recorded_round_starts_afresh_and_refuses_other_folders(tmp_path):
    (tmp_path / METRICS_FILE).write_text("")
    assert resume_point(tmp_path, "run-1", None) is None
    with pytest.raises(ConfigError, match="not a run folder"):
        resume_point(tmp_path / "elsewhere", "run-1", None)


def test_a_dp_ftrl_run_is_not_resumed():
    check_resumable(False)
    with pytest.raises(ConfigError, match='--resume: a run with federation.mechanism = "dp-ftrl"'):
        check_resumable(True)
