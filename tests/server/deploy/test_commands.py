"""``fedsearch deploy run --resume``: the run config that makes the ServerApp continue."""

from __future__ import annotations

import pytest

from common.cli import UsageError
from common.federation.run_spec import RUN_KEYS
from server.deploy.app_bundle import check_run_config
from server.deploy.commands import resumed_run_config
from server.federation.recorder import METRICS_FILE
from tests.server.deploy.test_app_bundle import REPO


def test_resume_sets_the_run_folder_and_the_resume_key(tmp_path):
    (tmp_path / "run 1").mkdir()
    (tmp_path / "run 1" / METRICS_FILE).write_text("")
    config = resumed_run_config("federation.rounds=4", tmp_path / "run 1")
    assert config == f'federation.rounds=4 run-dir="{tmp_path}/run 1" resume="true"'
    check_run_config(REPO, config)  # keys the app lists, parsed as flwr parses them
    assert "resume" in RUN_KEYS and resumed_run_config(None, None) is None


def test_resume_refuses_other_folders_and_its_own_keys_twice(tmp_path):
    with pytest.raises(UsageError, match="not a run folder"):
        resumed_run_config(None, tmp_path)
    (tmp_path / METRICS_FILE).write_text("")
    with pytest.raises(UsageError, match="drop them from --run-config"):
        resumed_run_config('run-dir="/x"', tmp_path)
