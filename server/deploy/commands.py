"""``fedsearch deploy ...``: certificates, SuperLink, device registration, runs.

Each command prints the exact flwr command it runs, so a deployment can also be driven by
hand or by a service manager.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import UsageError
from common.config import REPO_ROOT
from common.passthrough import run_passing_through
from server.deploy.layout import (
    DEFAULT_PORT,
    DEFAULT_SUPERLINK_PORT,
    DEVICES_FILE,
    Deployment,
    DeploymentInfo,
    active_runs,
    init_deployment,
    record_device,
    register_command,
    run_command,
    run_status,
    superlink_command,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ENV_NO_DEPS = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
APP_DIR = "app"
STARTED_RUN = re.compile(r"Successfully started run (\d+)")


def register_deploy_commands(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="run the federation on real devices (Flower Deployment Engine, TLS, device auth)",
        description="Operator commands for a Flower Deployment Engine federation: create "
        "the CA, the SuperLink certificate and the model-signing key; start the SuperLink "
        "with TLS and SuperNode authentication; register devices; start runs.",
    )
    sub = deploy.add_subparsers(dest="deploy_command", metavar="STEP", required=True)

    init = _add(
        sub, "init", "create the CA, SuperLink certificate, signing key, flwr config", runs=False
    )
    init.add_argument(
        "--host", default="127.0.0.1", help="address the Fleet gateway binds to (devices)"
    )
    init.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Fleet gateway HTTPS port (devices)"
    )
    init.add_argument(
        "--superlink-port",
        type=int,
        default=DEFAULT_SUPERLINK_PORT,
        help="SuperLink HTTPS port on 127.0.0.1 (operator's flwr CLI and the ServerApp)",
    )
    init.add_argument(
        "--cert-host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="host name or IP devices dial, put in the certificate (repeatable; the first "
        "is the address devices use; 127.0.0.1 and localhost are always added)",
    )
    init.set_defaults(handler=_init)

    link = _add(sub, "superlink", "start the SuperLink (TLS, SuperNode authentication)")
    link.set_defaults(handler=_superlink)

    gateway = _add(sub, "gateway", "start the Fleet gateway devices connect to (TLS)")
    gateway.set_defaults(handler=_gateway)

    reg = _add(sub, "register", "allow a device to join: register its auth.pub")
    reg.add_argument("public_key", type=Path, help="the device's auth.pub")
    reg.add_argument(
        "--name", help="the device's name, recorded in <dir>/devices.json (default: its folder)"
    )
    reg.set_defaults(handler=_register)

    run = _add(sub, "run", "start a federated run of this project's ServerApp/ClientApp")
    run.add_argument(
        "--app",
        type=Path,
        default=REPO_ROOT,
        help="project the app code is taken from (default: this installation); only its "
        "pyproject.toml and package modules are copied to <dir>/app and sent to devices",
    )
    run.add_argument(
        "--run-config",
        help='overrides of [tool.flwr.app.config] keys, e.g. "federation.rounds=2 num-devices=3"',
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run whose server was killed, in its run folder on the server "
        "(sets run-dir and resume): after its last recorded round, ledger intact",
    )
    run.add_argument("--no-stream", action="store_true", help="return once the run started")
    run.set_defaults(handler=_run)

    sign = _add(
        sub,
        "sign",
        "sign the versions a run published (runs started with --no-stream)",
        runs=False,
    )
    sign.add_argument("--run-id", type=int, required=True, help="the run (flwr ls)")
    sign.add_argument("--run-config", help="the --run-config the run was started with")
    sign.set_defaults(handler=_sign)

    env = _add(
        sub, "env", "print the shell exports for using `flwr` on this deployment", runs=False
    )
    env.set_defaults(handler=_env)


def _add(
    sub: argparse._SubParsersAction, name: str, text: str, *, runs: bool = True
) -> argparse.ArgumentParser:
    """A step with ``--dir``; ``runs``: it starts a command, so it takes ``--print-only``."""
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument(
        "--dir", type=Path, default=Path("deploy"), help="deployment folder (default: deploy)"
    )
    if runs:
        parser.add_argument(
            "--print-only", action="store_true", help="print the command instead of running it"
        )
    return parser


def _init(args: argparse.Namespace) -> int:
    for flag, port in (("--port", args.port), ("--superlink-port", args.superlink_port)):
        if not 0 < port < 65536:
            raise UsageError(f"{flag}: {port} is not in 1..65535")
    if args.port == args.superlink_port:
        raise UsageError("--port and --superlink-port must differ")
    from server.deploy.signer import PASSPHRASE_ENV, passphrase_from_env

    hosts = args.cert_host or ["127.0.0.1"]
    info = DeploymentInfo(args.host, args.port, hosts, args.superlink_port)
    passphrase = passphrase_from_env()
    try:
        dep = init_deployment(args.dir, info, passphrase=passphrase)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from exc
    print(f"deployment folder: {dep.root}")
    print(f"  devices dial the Fleet gateway: {dep.info.address}")
    print(f"  SuperLink (operator only): {dep.info.superlink_address}")
    print(f"  give devices: {dep.ca_cert} and {dep.signing_pub}")
    print(f"  keep private: {dep.ca_key}, {dep.server_key}, {dep.signing_key}")
    at_rest = f"encrypted (${PASSPHRASE_ENV})" if passphrase else "not encrypted"
    print(f"  signing key {at_rest}; only `fedsearch deploy run` uses it, never the SuperLink")
    return 0


def _superlink(args: argparse.Namespace) -> int:
    dep = Deployment(args.dir)
    return _exec(superlink_command(dep), dep, args.print_only, replace=True)


def _gateway(args: argparse.Namespace) -> int:
    from server.deploy.gateway import run_gateway

    dep = Deployment(args.dir)
    info = dep.info
    upstream = f"https://{info.superlink_address}"
    print(f"Fleet gateway on {info.host}:{info.port} -> {upstream}/v1/fleet/ only", flush=True)
    if args.print_only:
        return 0
    run_gateway(
        info.host,
        info.port,
        upstream,
        ca_cert=dep.ca_cert,
        certfile=dep.server_cert,
        keyfile=dep.server_key,
    )
    return 0


def _register(args: argparse.Namespace) -> int:
    if not args.public_key.is_file():
        raise FileNotFoundError(f"public key not found: {args.public_key}")
    dep = Deployment(args.dir)
    status = _exec(register_command(args.public_key, args.name), dep, args.print_only)
    if status == 0 and not args.print_only:
        entry = record_device(dep, args.public_key, args.name)
        print(f"recorded {entry['name']} in {dep.root / DEVICES_FILE}")
    return status


def resumed_run_config(run_config: str | None, resume: Path | None) -> str | None:
    """``run_config`` plus the keys that make the ServerApp continue the run in ``resume``."""
    if resume is None:
        return run_config
    if run_config and re.search(r"(^|\s)(run-dir|resume)\s*=", run_config):
        raise UsageError("--resume sets run-dir and resume: drop them from --run-config")
    from server.federation.recorder import METRICS_FILE  # heavy (Opacus, torch): on use

    if not (resume / METRICS_FILE).is_file():
        raise UsageError(f"--resume: {resume} holds no {METRICS_FILE}: not a run folder")
    keys = f'run-dir={json.dumps(str(resume.resolve()))} resume="true"'
    return f"{run_config} {keys}" if run_config else keys


def _run(args: argparse.Namespace) -> int:
    from server.deploy.app_bundle import check_run_config, sign_staged_app, stage_app
    from server.deploy.signer import operator_key

    dep = Deployment(args.dir)
    dep.info  # noqa: B018 - fails clearly if the folder is not a deployment
    run_config = resumed_run_config(args.run_config, args.resume)
    try:
        if run_config:
            check_run_config(args.app, run_config)
        app = stage_app(args.app, dep.root / APP_DIR)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    command = run_command(app, run_config, stream=not args.no_stream)
    env = dep.env()
    print(f"$ FLWR_HOME={shlex.quote(env['FLWR_HOME'])} {shlex.join(command)}", flush=True)
    if args.print_only:
        return 0
    key = operator_key(dep.signing_key)
    print(f"signed the app for devices: {sign_staged_app(app, key)} files", flush=True)
    signing = _VersionSigning(dep, key, app, run_config)
    status, output = run_passing_through(command, env, on_line=signing.hear)
    signing.stop()
    started = STARTED_RUN.search(output)
    if args.no_stream and started:
        print(
            f"run {started.group(1)}: its versions are published unsigned; sign them with "
            f"`fedsearch deploy sign --dir {args.dir} --run-id {started.group(1)}"
            + (f" --run-config {shlex.quote(run_config)}`" if run_config else "`"),
            flush=True,
        )
    if status != 0 or args.no_stream or started is None:
        return status or (0 if started else 1)
    final = run_status(dep, int(started.group(1)))
    print(f"run {started.group(1)}: {final}", flush=True)
    return 0 if final == "finished:completed" else 1


class _VersionSigning:
    """Signs the versions of the run ``flwr run`` starts, from the moment its id is printed
    until ``stop()`` (``server.deploy.signer``)."""

    def __init__(
        self, dep: Deployment, key: Ed25519PrivateKey, app: Path, run_config: str | None
    ) -> None:
        self.dep, self.key, self.app, self.run_config = dep, key, app, run_config
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def hear(self, line: str) -> None:
        started = STARTED_RUN.search(line)
        if started and self.thread is None:
            self.thread = threading.Thread(
                target=_sign_run,
                args=(self.dep, self.key, self.app, self.run_config, int(started.group(1))),
                kwargs={"done": self.done},
                daemon=True,
            )
            self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()


def _sign_run(
    dep: Deployment,
    key: Ed25519PrivateKey,
    app: Path,
    run_config: str | None,
    run_id: int,
    *,
    done: threading.Event,
) -> list[str]:
    """Sign run ``run_id``'s versions until ``done`` is set (at once if it is)."""
    from server.deploy.signer import RunSigner, run_target, sign_while

    registry, run_name = run_target(app, run_config, run_id)

    def others() -> list[str]:
        active = active_runs(dep)
        if active is None:
            return ["(unknown: `flwr ls` failed)"]
        return [str(r) for r in active if r != run_id]

    signer = RunSigner(key, registry, run_name, others)
    sign_while(signer, done, lambda text: print(f"fedsearch deploy: {text}", flush=True))
    return signer.signed


def _sign(args: argparse.Namespace) -> int:
    from server.deploy.app_bundle import check_run_config
    from server.deploy.signer import operator_key

    dep = Deployment(args.dir)
    dep.info  # noqa: B018 - fails clearly if the folder is not a deployment
    app = dep.root / APP_DIR  # what `deploy run` staged and sent
    try:
        if args.run_config:
            check_run_config(app, args.run_config)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    done = threading.Event()
    done.set()
    signed = _sign_run(
        dep, operator_key(dep.signing_key), app, args.run_config, args.run_id, done=done
    )
    print(f"run {args.run_id}: signed {', '.join(signed) or 'nothing (none pending)'}")
    return 0


def _env(args: argparse.Namespace) -> int:
    dep = Deployment(args.dir)
    dep.info  # noqa: B018 - fails clearly if the folder is not a deployment
    for key in (
        "FLWR_HOME",
        "FLWR_TELEMETRY_ENABLED",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION",
    ):
        print(f"export {key}={shlex.quote(dep.env()[key])}")
    return 0


def _exec(command: list[str], dep: Deployment, print_only: bool, replace: bool = False) -> int:
    env = dep.env()
    print(f"$ FLWR_HOME={shlex.quote(env['FLWR_HOME'])} {shlex.join(command)}", flush=True)
    if print_only:
        return 0
    if replace:
        os.execvpe(command[0], command, env)
    return subprocess.run(command, env=env, check=False).returncode
