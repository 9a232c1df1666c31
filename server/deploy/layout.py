"""The server side of a real deployment on Flower's Deployment Engine (flwr 1.41).

One folder holds what the operator needs::

    <deploy>/
      deployment.json          SuperLink address and certificate hosts
      ca/ca.crt ca/ca.key      the federation's CA (ca.key never leaves this machine)
      superlink/server.crt     TLS certificate for the SuperLink (SANs = hosts)
      superlink/server.key
      superlink/state.db       the SuperLink's state (registered SuperNodes, runs)
      signing/signing.key      Ed25519 key the operator signs the app and model versions with
      signing/signing.pub      give this to devices and the search service
      flwr/config.toml         FLWR_HOME for the ``flwr`` CLI: connection "fedsearch"
      devices.json             registered devices: name and public key
      app/                     the app code sent to devices (``server.deploy.app_bundle``)

In flwr 1.41 the SuperLink serves the Fleet, Control and Runtime APIs over HTTPS on one
port, and without Flower's enterprise account authentication the Control and Runtime APIs
answer anyone who connects. So the SuperLink binds 127.0.0.1 (``superlink_port``: the
operator's ``flwr`` CLI and the ServerApp use it) and devices dial the Fleet gateway
(``server.deploy.gateway``, ``port``), which forwards only the Fleet API. With
``--enable-supernode-auth`` a SuperNode may only join with a key registered through
``flwr supernode register``; its Fleet requests are signed with that key. The functions
below return the exact commands, so they can be printed, run by ``fedsearch deploy ...``
or copied into a service manager.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.config import ENCODER_DIR_ENV, default_encoder_dir
from common.federation.flower_env import flower_env
from common.security.pki import LOCAL_HOSTS, create_ca, issue_server_cert
from common.security.signing import generate_signing_key

DEPLOYMENT_FILE = "deployment.json"
DEVICES_FILE = "devices.json"
DEPLOY_CONNECTION = "fedsearch"
DEFAULT_PORT = 9092
DEFAULT_SUPERLINK_PORT = 9093


@dataclass(frozen=True)
class DeploymentInfo:
    """``host``/``port``: where the Fleet gateway listens for devices; ``superlink_port``:
    the SuperLink on 127.0.0.1; ``hosts``: certificate names, the first is what devices dial.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))
    superlink_port: int = DEFAULT_SUPERLINK_PORT

    @property
    def address(self) -> str:
        """What SuperNodes dial: the gateway, by the first certificate host."""
        return f"{self.hosts[0]}:{self.port}"

    @property
    def superlink_address(self) -> str:
        """What the operator's ``flwr`` CLI dials (on the SuperLink's machine)."""
        return f"127.0.0.1:{self.superlink_port}"


class Deployment:
    """Paths of a deployment folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def info(self) -> DeploymentInfo:
        path = self.root / DEPLOYMENT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a deployment folder (no {DEPLOYMENT_FILE}); "
                "create it with `fedsearch deploy init`"
            )
        return DeploymentInfo(**json.loads(path.read_text(encoding="utf-8")))

    ca_cert = property(lambda self: self.root / "ca" / "ca.crt")
    ca_key = property(lambda self: self.root / "ca" / "ca.key")
    server_cert = property(lambda self: self.root / "superlink" / "server.crt")
    server_key = property(lambda self: self.root / "superlink" / "server.key")
    database = property(lambda self: self.root / "superlink" / "state.db")
    signing_key = property(lambda self: self.root / "signing" / "signing.key")
    signing_pub = property(lambda self: self.root / "signing" / "signing.pub")
    flwr_home = property(lambda self: self.root / "flwr")

    def env(self) -> dict[str, str]:
        """Environment for the SuperLink and the ``flwr`` CLI of this deployment. It names
        no signing key: the ServerApp publishes unsigned versions and the operator's
        ``deploy run`` signs them (``server.deploy.signer``). The ServerApp inherits
        ``$FEDSEARCH_ENCODER_DIR`` (absolute), so it names the base encoder that the
        operator's ``fedsearch serve`` and ``device import-history`` find."""
        return flower_env(
            FLWR_HOME=str(self.flwr_home),
            **{ENCODER_DIR_ENV: str(default_encoder_dir().resolve())},
        )


def init_deployment(
    root: Path, info: DeploymentInfo, *, passphrase: bytes | None = None
) -> Deployment:
    """Create the CA, the SuperLink's certificate, the signing key (encrypted with
    ``passphrase`` if given) and the flwr config."""
    dep = Deployment(root)
    if (dep.root / DEPLOYMENT_FILE).exists():
        raise FileExistsError(f"{dep.root} is already a deployment folder")
    if not info.hosts:
        raise ValueError("at least one certificate host is needed")
    for sub in ("ca", "superlink", "signing", "flwr"):
        (dep.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    create_ca(dep.ca_cert, dep.ca_key, "fedsearch federation CA")
    hosts = list(dict.fromkeys([*info.hosts, *LOCAL_HOSTS]))
    issue_server_cert(dep.ca_cert, dep.ca_key, dep.server_cert, dep.server_key, hosts)
    generate_signing_key(dep.signing_key, dep.signing_pub, passphrase=passphrase)
    write_flwr_config(dep, info)
    (dep.root / DEPLOYMENT_FILE).write_text(json.dumps(asdict(info), indent=2), "utf-8")
    return dep


def write_flwr_config(dep: Deployment, info: DeploymentInfo) -> None:
    """``$FLWR_HOME/config.toml`` with the TLS connection ``fedsearch`` as the default."""
    (dep.flwr_home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{DEPLOY_CONNECTION}"\n\n'
        f"[superlink.{DEPLOY_CONNECTION}]\n"
        f'address = "{info.superlink_address}"\n'
        f'root-certificates = "{dep.ca_cert}"\n',
        encoding="utf-8",
    )


def superlink_command(dep: Deployment) -> list[str]:
    """``flower-superlink`` on 127.0.0.1 with TLS, SuperNode authentication, a persistent
    state, and no runtime installation of app dependencies."""
    info = dep.info
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(dep.ca_cert),
        "--ssl-certfile",
        str(dep.server_cert),
        "--ssl-keyfile",
        str(dep.server_key),
        "--enable-supernode-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(info.superlink_port),
        "--database",
        str(dep.database),
        "--disable-runtime-dependency-installation",
    ]


def gateway_command(dep: Deployment) -> list[str]:
    """The Fleet gateway (``fedsearch deploy gateway``) as a command of this interpreter."""
    return [sys.executable, "-m", "common.cli", "deploy", "gateway", "--dir", str(dep.root)]


def record_device(dep: Deployment, public_key: Path, name: str | None) -> dict[str, str]:
    """Note a registered device in ``devices.json`` (flwr 1.41 keeps no name for it): its
    name (default: the key file's folder) and the sha256 of its public key."""
    key_text = Path(public_key).read_text(encoding="utf-8").strip()
    entry = {
        "name": name or Path(public_key).resolve().parent.name,
        "public_key_sha256": hashlib.sha256(key_text.encode()).hexdigest(),
        "public_key": key_text,
    }
    path = dep.root / DEVICES_FILE
    known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    known = [d for d in known if d["public_key_sha256"] != entry["public_key_sha256"]]
    path.write_text(json.dumps([*known, entry], indent=2), encoding="utf-8")
    return entry


def register_command(public_key: Path, name: str | None = None) -> list[str]:
    """``flwr supernode register``: let the device holding this key join."""
    command = ["flwr", "supernode", "register", str(public_key), DEPLOY_CONNECTION]
    return [*command, "--name", name] if name else command


def run_command(app_dir: Path, run_config: str | None = None, stream: bool = True) -> list[str]:
    """``flwr run``: start the ServerApp/ClientApp of ``app_dir`` on the federation."""
    command = ["flwr", "run", str(app_dir), DEPLOY_CONNECTION]
    if run_config:
        command += ["--run-config", run_config]
    return [*command, "--stream"] if stream else command


def run_status(dep: Deployment, run_id: int) -> str:
    """A run's status as ``flwr ls`` reports it (e.g. ``finished:completed``), "" if unknown."""
    runs = _listed_runs(dep, ["--run-id", str(run_id)])
    return str(runs[0]["status"]) if runs else ""


def active_runs(dep: Deployment) -> list[int] | None:
    """Ids of the runs not finished on the SuperLink; None if ``flwr ls`` cannot tell."""
    runs = _listed_runs(dep, [])
    if runs is None:
        return None
    return [int(r["run-id"]) for r in runs if not str(r["status"]).startswith("finished")]


def _listed_runs(dep: Deployment, extra: list[str]) -> list[dict] | None:
    out = subprocess.run(
        ["flwr", "ls", DEPLOY_CONNECTION, *extra, "--format", "json"],
        env=dep.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return list(json.loads(out.stdout[out.stdout.index("{") :])["runs"])
    except (ValueError, KeyError, TypeError):
        return None
