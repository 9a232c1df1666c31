"""The Flower app ``flwr run`` sends: its folder (app code only) and its run config.

Flower's builder packs every ``.py``/``.toml``/``.md``/``.json`` file under the folder it is
given. The project folder also holds run data (``deploy/``, device folders, ``runs/``), so
``stage_app`` copies an allow-list into a folder of its own: ``pyproject.toml`` (the app's
components and run config) and the modules and package data of the project's packages.

``stage_app`` writes ``pyproject.toml`` as Flower's builder rewrites it into the FAB (parsed
and dumped again, ``[tool.flwr.federations]`` dropped), so the app signature the operator
adds (``sign_staged_app``, ``common.security.app_signing``) covers the FAB's bytes exactly.

``check_run_config`` names the keys of a ``--run-config`` string that the app's
``[tool.flwr.app.config]`` table does not list (flwr itself only answers "Invalid run
configuration").
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common.config import get_project_config, parse_config_args

from common.config import Config
from common.federation.run_spec import RunSpec
from common.security.app_signing import sign_app

APP_PACKAGES = ("common", "client", "server", "simulation")
# what a deployment's config-file may set: devices never read it (client.app), so settings
# they must agree on (federation, adapter, evaluation, population) go in --run-config
SERVER_ONLY_SECTIONS = ("paths", "encoder", "pretrain", "centralized", "search", "speech")
APP_FILE_PATTERNS = ("*.py", "*.json", "*.toml")
PROJECT_FILE = "pyproject.toml"


def app_files(source: Path) -> list[Path]:
    """The allow-listed files of the project at ``source``, relative to it."""
    if not (source / PROJECT_FILE).is_file():
        raise FileNotFoundError(f"{source} is not a Flower app folder (no {PROJECT_FILE})")
    files = [Path(PROJECT_FILE)]
    for package in APP_PACKAGES:
        root = source / package
        if not (root / "__init__.py").is_file():
            raise FileNotFoundError(f"{root}: package {package!r} is missing")
        for pattern in APP_FILE_PATTERNS:
            files += [
                path.relative_to(source)
                for path in root.rglob(pattern)
                if "__pycache__" not in path.parts
            ]
    return sorted(set(files))


def stage_app(source: Path, target: Path) -> Path:
    """Replace ``target`` with a copy of ``app_files(source)``; returns ``target``."""
    files = app_files(source)
    if target.exists():
        shutil.rmtree(target)
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)
    project = target / PROJECT_FILE
    config = tomllib.loads(project.read_text(encoding="utf-8"))
    config.get("tool", {}).get("flwr", {}).pop("federations", None)
    project.write_text(tomli_w.dumps(config), encoding="utf-8")
    return target


def sign_staged_app(app_dir: Path, private_key: Ed25519PrivateKey) -> int:
    """Sign the staged app for devices (``client.app_guard``); returns how many files."""
    return len(sign_app(app_dir, private_key))


def run_config_keys(app_dir: Path) -> list[str]:
    """The keys ``--run-config`` may set: the app's ``[tool.flwr.app.config]`` table."""
    table = get_project_config(app_dir)["tool"]["flwr"]["app"].get("config", {})
    return sorted(flat_config(table))


def check_run_config(app_dir: Path, run_config: str) -> None:
    """ValueError naming each unknown key of ``run_config`` and the valid ones, or a
    setting the ServerApp would refuse (e.g. promotion without federated evaluation)."""
    try:
        given = parse_config_args([run_config])
    except Exception as exc:  # flwr raises click/TOML errors for malformed strings
        raise ValueError(f"--run-config: cannot parse {run_config!r}: {exc}") from exc
    valid = run_config_keys(app_dir)
    unknown = [key for key in given if key not in valid]
    if unknown:
        raise ValueError(
            f"--run-config: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
        )
    if given.get("config-file"):
        check_config_file(Path(str(given["config-file"])))
    stale = [key for key in given if "." in key and not is_config_key(key)]
    if stale:
        raise ValueError(
            f"--run-config: {', '.join(stale)} listed in [tool.flwr.app.config] but not a "
            "fedsearch setting (common/config.py)"
        )
    server_run_spec(app_dir, given, 0).config.federation.promotion_rule(simulated=False)


def server_run_spec(app_dir: Path, given: dict[str, Any], run_id: int) -> RunSpec:
    """The ``RunSpec`` the ServerApp of run ``run_id`` will build from the app's
    ``[tool.flwr.app.config]`` and the ``given`` run-config values (its encoder not looked
    up); raises ``ConfigError`` (a ``ValueError``) for settings it would refuse."""
    table = flat_config(get_project_config(app_dir)["tool"]["flwr"]["app"].get("config", {}))
    flat = {**table, **given}
    flat["base-model"] = flat.get("base-model") or "-"  # not needed here: skip the lookup
    return RunSpec.from_run_config(flat, run_id)


def check_config_file(path: Path) -> None:
    """ValueError if the run's ``config-file`` sets what devices must agree on."""
    if not path.is_file():
        raise ValueError(f"config-file: {path} not found (give an absolute path)")
    try:
        sections = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config-file: {path}: {exc}") from exc
    shared = sorted(set(sections) - set(SERVER_ONLY_SECTIONS))
    if shared:
        raise ValueError(
            f"config-file: {path} sets [{'], ['.join(shared)}], which devices never read "
            f"(they read their own config only): set them with --run-config; a config-file "
            f"may set [{'], ['.join(SERVER_ONLY_SECTIONS)}]"
        )


def is_config_key(key: str) -> bool:
    """Whether ``section.name`` is a fedsearch setting (what the ServerApp will accept)."""
    section, _, name = key.partition(".")
    field = Config.model_fields.get(section)
    model = getattr(field, "annotation", None)
    return isinstance(model, type) and name.replace("-", "_") in getattr(model, "model_fields", {})


def flat_config(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested TOML table as flat ``section.key`` entries (what a run config holds)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        out |= flat_config(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out
