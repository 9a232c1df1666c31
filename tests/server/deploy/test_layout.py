"""Deployment tooling: certificates, keys and the exact flwr 1.41 commands (no processes)."""

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as _parse_superexec_args
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from client.device import Device, DeviceInfo, init_device, superexec_command, supernode_command
from client.superexec import pop_trusted_key
from common.cli import main
from common.security.pki import create_node_auth_keys
from server.deploy.layout import (
    Deployment,
    DeploymentInfo,
    init_deployment,
    register_command,
    superlink_command,
)


@pytest.fixture()
def dep(tmp_path: Path) -> Deployment:
    return init_deployment(tmp_path / "deploy", DeploymentInfo("0.0.0.0", 9092, ["fl.example"]))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_private_keys_owner_only_and_refuses_twice(dep: Deployment) -> None:
    for key in (dep.ca_key, dep.server_key, dep.signing_key):
        assert _mode(key) == 0o600
    assert dep.info.address == "fl.example:9092"
    config = (dep.flwr_home / "config.toml").read_text()
    assert dep.info.superlink_address == "127.0.0.1:9093"
    assert 'address = "127.0.0.1:9093"' in config and str(dep.ca_cert) in config
    with pytest.raises(FileExistsError):
        init_deployment(dep.root, DeploymentInfo())


def test_server_certificate_chains_to_ca_with_hosts(dep: Deployment) -> None:
    ca = x509.load_pem_x509_certificate(dep.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(dep.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = sans.get_values_for_type(x509.DNSName) + [
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    ]
    assert set(names) == {"fl.example", "localhost", "127.0.0.1"}


def test_tls_handshake_with_the_ca(dep: Deployment) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(dep.server_cert, dep.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(dep.ca_cert))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
    thread.join(timeout=5)
    listener.close()
    stranger = ssl.create_default_context()  # system CAs only: must not trust our server
    assert not stranger.get_ca_certs() or all(
        c.get("subject") != {"commonName": "fedsearch federation CA"}
        for c in stranger.get_ca_certs()
    )


def test_superlink_command_is_valid_for_flwr(dep: Deployment) -> None:
    command = superlink_command(dep)
    assert command[0] == "flower-superlink"
    args = _parse_args_run_superlink().parse_args(command[1:])
    assert args.enable_supernode_auth and not args.insecure
    assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (
        str(dep.ca_cert),
        str(dep.server_cert),
        str(dep.server_key),
    )
    assert (args.host, args.port) == ("127.0.0.1", 9093)  # private: devices use the gateway
    assert args.runtime_dependency_install is False
    assert register_command(Path("a.pub"), "dev1") == [
        "flwr", "supernode", "register", "a.pub", "fedsearch", "--name", "dev1"
    ]  # fmt: skip


def test_device_keys_and_supernode_command(dep: Deployment, tmp_path: Path) -> None:
    device = init_device(
        tmp_path / "my device",
        DeviceInfo("dev1", dep.info.address, runtime_port=9101),
        ca_cert=dep.ca_cert,
        signing_pub=dep.signing_pub,
    )
    for key in (device.auth_key, device.store_key, device.runtime_dir / "runtime.key"):
        assert _mode(key) == 0o600
    assert not (device.runtime_dir / ".runtime-ca.key").exists()  # the local CA key is gone
    key = load_ssh_private_key(device.auth_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert try_load_public_key(device.auth_pub)  # what `flwr supernode register` accepts

    command = supernode_command(device)
    args = _parse_args_run_supernode().parse_args(command[1:])
    assert args.superlink == "fl.example:9092" and not args.insecure
    assert args.root_certificates == str(device.ca_cert)
    assert args.auth_supernode_private_key == str(device.auth_key)
    assert (args.host, args.port) == ("127.0.0.1", 9101)
    assert args.ssl_certfile and args.ssl_keyfile and args.ssl_ca_certfile
    assert args.isolation == "process"  # the ClientApps run under client.superexec
    executor = superexec_command(device)
    assert executor[1:3] == ["-m", "client.superexec"]
    trusted, flower_args = pop_trusted_key(executor[2:])
    assert trusted == device.signing_pub  # only apps signed with this key run
    exec_args = _parse_superexec_args().parse_args(flower_args[1:])
    assert exec_args.runtime_api_address == "127.0.0.1:9101"
    assert exec_args.root_certificates == args.ssl_ca_certfile and not exec_args.insecure
    node_config = parse_config_args([args.node_config])
    assert node_config == {"device-dir": str(device.folder), "device-name": "dev1"}

    with pytest.raises(FileExistsError):
        init_device(device.folder, device.info, ca_cert=dep.ca_cert, signing_pub=dep.signing_pub)


def test_node_auth_keys_are_fresh(tmp_path: Path) -> None:
    a = create_node_auth_keys(tmp_path / "a.key", tmp_path / "a.pub")
    b = create_node_auth_keys(tmp_path / "b.key", tmp_path / "b.pub")
    assert a != b and a.startswith("ecdsa-sha2-nistp384 ")


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["deploy", "superlink", "--dir", str(tmp_path / "nope"), "--print-only"]) == 2
    assert "not a deployment folder" in capsys.readouterr().err
    assert main(["device", "budget", str(tmp_path / "nope")]) == 2
    assert "not a device folder" in capsys.readouterr().err
    assert main(["deploy", "init", "--dir", str(tmp_path / "d"), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err


def test_cli_init_deployment_and_device(tmp_path: Path, capsys) -> None:
    d = tmp_path / "deploy"
    assert main(["deploy", "init", "--dir", str(d), "--port", "9555"]) == 0
    assert main(["deploy", "superlink", "--dir", str(d), "--print-only"]) == 0
    out = capsys.readouterr().out
    assert "flower-superlink" in out and "--enable-supernode-auth" in out and "9555" in out
    dev = tmp_path / "dev1"
    assert (
        main(
            [
                "device",
                "init",
                str(dev),
                "--superlink",
                "127.0.0.1:9555",
                "--ca",
                str(d / "ca" / "ca.crt"),
                "--signing-key",
                str(d / "signing/signing.pub"),
            ]
        )  # fmt: skip
        == 0
    )
    assert Device(dev).info.superlink == "127.0.0.1:9555"
    assert main(["device", "join", str(dev), "--print-only"]) == 0
    assert "--auth-supernode-private-key" in capsys.readouterr().out
    assert main(["device", "budget", str(dev)]) == 0
    assert "epsilon 0.000 of" in capsys.readouterr().out


def test_gateway_forwards_nothing_but_the_fleet_api(dep: Deployment) -> None:
    from starlette.testclient import TestClient

    from server.deploy.gateway import create_gateway

    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    upstream = f"https://127.0.0.1:{unused.getsockname()[1]}"  # nothing listens there
    with TestClient(create_gateway(upstream, dep.ca_cert)) as client:
        for path in ("/v1/control/register-node", "/v1/control/start-run", "/docs", "/"):
            assert client.post(path).status_code == 404
        assert client.get("/v1/fleet/pull-messages").status_code in (404, 405)
        assert client.post("/v1/fleet/pull-messages", content=b"x").status_code == 502
    unused.close()
