"""``fedsearch deploy run --resume``: the run config that makes the ServerApp continue."""

from __future__ import annotations

import pytest

from common.cli import UsageError, main
from common.federation.run_spec import RUN_KEYS
from server.deploy.app_bundle import check_run_config
from server.deploy.commands import resumed_run_config
from server.federation.recorder import METRICS_FILE
from tests.server.deploy.test_app_bundle import REPO
from tests.simulation.test_resume import readme_command


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


def test_the_readmes_resume_command_starts_the_run_in_its_folder(tmp_path, capsys):
    deployment, run_dir = tmp_path / "deploy", tmp_path / "runs" / "run-7"
    run_dir.mkdir(parents=True)
    (run_dir / METRICS_FILE).write_text("")
    assert main(["deploy", "init", "--dir", str(deployment)]) == 0
    argv = readme_command("fedsearch deploy run --resume", run_dir)
    assert main([*argv[1:], "--dir", str(deployment), "--print-only"]) == 0
    out = capsys.readouterr().out
    assert f'run-dir="{run_dir}" resume="true"' in out.replace("'", "")
