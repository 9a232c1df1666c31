"""What ``fedsearch deploy run`` sends to devices (app code only), its run-config check, the
``--help`` examples of the deployment commands, and ``register --name`` being recorded."""

from __future__ import annotations

import argparse
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from common.cli import build_parser, main
from common.config import load_config, parse_override
from common.security.pki import create_node_auth_keys
from server.deploy.app_bundle import (
    app_files,
    check_run_config,
    is_config_key,
    run_config_keys,
    stage_app,
)
from server.deploy.layout import DEVICES_FILE, Deployment, record_device

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def populated_project(tmp_path: Path) -> Path:
    """A copy of this project's app code with run data around it, as in a checkout that
    followed the README: deploy/, dev*/ and runs/ folders full of .json/.py/.toml/.md."""
    project = stage_app(REPO, tmp_path / "project")
    (project / "README.md").write_text("# readme\n")
    data = {
        "deploy/run/metrics.jsonl": "{}\n",
        "deploy/run/privacy_ledger.json": "{}",
        "deploy/work/registry/v0001/manifest.json": "{}",
        "deploy/run.toml": "[paths]\n",
        "deploy/app/old.py": "print('an earlier bundle')\n",
        "dev1/device.json": "{}",
        "dev2/flwr/apps/fab.py": "x = 1\n",
        "runs/encoder/v0001/manifest.json": "{}",
        "server/federation/__pycache__/app.cpython-311.json": "{}",
    }
    for name, text in data.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    return project


def test_bundle_holds_app_code_only(populated_project: Path, tmp_path: Path) -> None:
    staged = stage_app(populated_project, tmp_path / "deploy" / "app")
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(staged)))
    names = [n for n in fab.namelist() if not n.startswith(".info/")]
    assert "pyproject.toml" in names and "server/federation/app.py" in names
    assert "client/app.py" in names
    assert "common/model/model_configs/fedsearch-minilm-rn64.json" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pyproject.toml", "common", "client", "server", "simulation"}, tops
    assert not [n for n in names if "__pycache__" in n]
    expected = {str(p) for p in app_files(populated_project)}
    assert set(names) == expected
    size = sum(fab.getinfo(n).file_size for n in names)
    assert size < 3_000_000, f"{size} bytes: flwr refuses FABs over 10 MB"
    # staging again replaces the earlier copy rather than adding to it
    (staged / "stale.py").write_text("")
    assert not (stage_app(populated_project, staged) / "stale.py").exists()


def test_bundle_needs_a_project(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pyproject.toml"):
        app_files(tmp_path)


def test_unknown_run_config_keys_are_named_with_the_valid_ones(tmp_path: Path, capsys) -> None:
    assert "federation.rounds" in run_config_keys(REPO)
    dotted = [k for k in run_config_keys(REPO) if "." in k]
    assert dotted and all(is_config_key(k) for k in dotted)  # pyproject and config agree
    assert not is_config_key("federation.eval_devices") and not is_config_key("nope.rounds")
    named = "unknown key.*num-server-rounds; valid keys: .*federation.rounds"
    with pytest.raises(ValueError, match=named):
        check_run_config(REPO, "num-server-rounds=2 federation.rounds=2")
    check_run_config(REPO, 'num-devices=3 population="retail" federation.rounds=2')
    d = tmp_path / "deploy"
    assert main(["deploy", "init", "--dir", str(d)]) == 0
    args = ["deploy", "run", "--dir", str(d), "--print-only", "--run-config"]
    assert main([*args, "num-server-rounds=2"]) == 2
    err = capsys.readouterr().err
    assert "num-server-rounds" in err and "federation.clients_per_round" in err
    assert not (d / "app").exists()
    assert main([*args, "federation.rounds=2"]) == 0
    assert f"flwr run {d.resolve() / 'app'} fedsearch" in capsys.readouterr().out
    assert (d / "app" / "server" / "federation" / "app.py").is_file()


def _helps(parser: argparse.ArgumentParser, path: str = "fedsearch"):
    """(command path, option, help text) of every option of every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _helps(sub, f"{path} {name}")
        elif action.help:
            yield path, "/".join(action.option_strings), action.help


def test_every_help_example_of_the_deployment_commands_works(tmp_path: Path) -> None:
    examples = [
        (path, option, m.group(1).strip('"'))
        for path, option, text in _helps(build_parser())
        if path.startswith(("fedsearch deploy", "fedsearch device"))
        for m in re.finditer(r"e\.g\. (?:--\S+ )?(\"[^\"]+\"|\S+)", text)
    ]
    assert {(p, o) for p, o, _ in examples} >= {
        ("fedsearch deploy run", "--run-config"),
        ("fedsearch device init", "--superlink"),
    }
    d = tmp_path / "deploy"
    assert main(["deploy", "init", "--dir", str(d)]) == 0
    for n, (path, option, example) in enumerate(examples):
        if option == "--set":
            load_config(None, parse_override(example))
            continue
        if option == "--run-config":
            argv = ["deploy", "run", "--dir", str(d), "--print-only", option, example]
        elif path == "fedsearch device init":
            ca, pub = str(d / "ca" / "ca.crt"), str(d / "signing" / "signing.pub")
            folder = str(tmp_path / f"dev{n}")
            argv = ["device", "init", folder, "--ca", ca, "--signing-key", pub]
            argv += ["--superlink", "127.0.0.1:9092", option, example]  # the last one counts
        else:
            pytest.fail(f"{path} {option}: example {example!r} is not exercised by this test")
        assert main(argv) == 0, f"{path} {option} {example!r}"


def test_register_records_the_name(tmp_path: Path, capsys) -> None:
    d = tmp_path / "deploy"
    assert main(["deploy", "init", "--dir", str(d)]) == 0
    create_node_auth_keys(tmp_path / "dev1" / "auth.key", tmp_path / "dev1" / "auth.pub")
    create_node_auth_keys(tmp_path / "dev2" / "auth.key", tmp_path / "dev2" / "auth.pub")
    dep = Deployment(d)
    record_device(dep, tmp_path / "dev1" / "auth.pub", "kitchen-tablet")
    record_device(dep, tmp_path / "dev2" / "auth.pub", None)
    record_device(dep, tmp_path / "dev1" / "auth.pub", "kitchen-tablet-2")  # renamed, once
    known = json.loads((d / DEVICES_FILE).read_text())
    assert [k["name"] for k in known] == ["dev2", "kitchen-tablet-2"]
    assert known[0]["public_key"] == (tmp_path / "dev2" / "auth.pub").read_text().strip()
    assert main(["deploy", "register", "--dir", str(d), str(tmp_path / "dev1/auth.pub"),
                 "--name", "x", "--print-only"]) == 0  # fmt: skip
    assert "--name x" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # init runs no command: nothing to print
        main(["deploy", "init", "--dir", str(tmp_path / "e"), "--print-only"])


def test_a_config_file_may_not_set_what_devices_must_agree_on(tmp_path):
    server_only = tmp_path / "ok.toml"
    server_only.write_text(f'[paths]\nwork_dir = "{tmp_path}"\n')
    check_run_config(REPO, f'config-file="{server_only}"')
    shared = tmp_path / "shared.toml"
    shared.write_text("[federation]\nnoise_multiplier = 0.1\n[device]\ndp = false\n")
    with pytest.raises(ValueError, match=r"sets \[device\], \[federation\], which devices never"):
        check_run_config(REPO, f'config-file="{shared}"')
    with pytest.raises(ValueError, match="not found"):
        check_run_config(REPO, f'config-file="{tmp_path / "missing.toml"}"')
