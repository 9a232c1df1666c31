"""End to end on Flower's Deployment Engine, on 127.0.0.1: a SuperLink with TLS and SuperNode
authentication, three registered devices (SuperNodes) and one unregistered one; two rounds of
the project's ServerApp/ClientApp with DP and SecAgg+; a new signed version is published.
Every process is started in its own session and stopped by the test, also on failure."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from client.device import (
    Device,
    DeviceInfo,
    device_env,
    init_device,
    save_public_items,
    supernode_command,
)
from client.store import KEY_ENV
from common.model.fusion import l2_normalize
from common.security.signing import SignatureError, load_public_key, verify_version
from common.security.versions import list_versions
from server.deploy.layout import (
    Deployment,
    DeploymentInfo,
    gateway_command,
    init_deployment,
    register_command,
    run_command,
    superlink_command,
)

REPO = Path(__file__).resolve().parents[3]
DIM, ITEMS, SEARCHES, SHOWN = 16, 60, 12, 6
RUN_TIMEOUT_S = 420


# Three devices cannot hide one another: any noise that protected one of them would drown
# the round's noised counts, so this test checks the mechanics with devices that allow it.
LENIENT_POLICY = {"max_epsilon_user": 1e9, "min_noise_multiplier": 0.01}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Started processes, each in its own session; ``stop_all`` ends their process groups."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # children (SuperExec, apps) too
            proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _fill_device(device: Device, items: np.ndarray, rng: np.random.Generator) -> None:
    """A device's search log: noisy queries near the item it then clicked."""
    ids = [f"item-{i}" for i in range(ITEMS)]
    save_public_items(device, ids, items)
    store = device.open_store()
    for _ in range(SEARCHES):
        shown = rng.choice(ITEMS, size=SHOWN, replace=False)
        query = l2_normalize(items[shown[0]] + 0.5 * rng.standard_normal(DIM))
        entry = store.log_search("q", query, [ids[i] for i in shown], items[shown])
        store.log_click(entry.search_id, ids[shown[0]])


def _config_file(path: Path, work: Path) -> Path:
    path.write_text(
        f"""
[paths]
work_dir = "{work}"
[adapter]
rank = 4
shown_negatives = 5
random_negatives = 5
[federation]
dp = true
secagg = true
noise_multiplier = 0.02
clipping_norm = 0.5
epsilon_user = 1e9
[evaluation]
k = 5
candidates = 10
""",
        encoding="utf-8",
    )
    return path


def _app_dir() -> Path:
    """The project itself: the same ServerApp/ClientApp as the simulation."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    if "[tool.flwr.app]" not in text:
        pytest.skip("pyproject.toml has no [tool.flwr.app] section yet")
    return REPO


def _run_status(dep: Deployment, run_id: int) -> str:
    out = subprocess.run(
        ["flwr", "ls", "fedsearch", "--run-id", str(run_id), "--format", "json"],
        env=dep.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        runs = json.loads(out.stdout[out.stdout.index("{") :])["runs"]
    except (ValueError, KeyError):
        return ""
    return runs[0]["status"] if runs else ""


def test_superlink_three_devices_dp_secagg_signed_version(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    app_dir = _app_dir()
    port, superlink_port = _free_port(), _free_port()
    info = DeploymentInfo("127.0.0.1", port, superlink_port=superlink_port)
    dep = init_deployment(tmp_path / "deploy", info)
    work = tmp_path / "work"
    rng = np.random.default_rng(0)
    items = l2_normalize(rng.standard_normal((ITEMS, DIM)))
    devices = []
    for n in range(4):
        device_info = DeviceInfo(f"dev{n}", dep.info.address, runtime_port=_free_port())
        device = init_device(
            tmp_path / device_info.name,
            device_info,
            ca_cert=dep.ca_cert,
            signing_pub=dep.signing_pub,
            policy=LENIENT_POLICY,
        )
        _fill_device(device, items, rng)
        devices.append(device)

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        procs.start("superlink", superlink_command(dep), dep.env())
        procs.start("gateway", gateway_command(dep), dep.env())
        _wait_for(lambda: _port_open(superlink_port), 60, "the SuperLink")
        _wait_for(lambda: _port_open(port), 60, "the Fleet gateway")
        for device in devices[:3]:
            done = subprocess.run(
                register_command(device.auth_pub, device.info.name),
                env=dep.env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        for device in devices:
            procs.start(device.info.name, supernode_command(device), device_env(device))

        # Devices reach only the Fleet API: self-registration through the gateway fails.
        (tmp_path / "intruder").mkdir()
        (tmp_path / "intruder" / "config.toml").write_text(
            f'[superlink]\ndefault = "fedsearch"\n[superlink.fedsearch]\n'
            f'address = "{dep.info.address}"\nroot-certificates = "{devices[3].ca_cert}"\n'
        )
        sneaky = subprocess.run(
            register_command(devices[3].auth_pub),
            env={**dep.env(), "FLWR_HOME": str(tmp_path / "intruder")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sneaky.returncode != 0 and "registered successfully" not in sneaky.stdout

        intruder = procs.procs["dev3"]
        _wait_for(lambda: intruder.poll() is not None, 60, "the unregistered SuperNode to exit")
        assert intruder.returncode != 0
        assert "Failed to activate SuperNode" in procs.log("dev3")

        run_config = (
            f'num-devices=3 embedding-dim={DIM} population="marketplace" '
            f'run-dir="{tmp_path / "run"}" '
            f'config-file="{_config_file(tmp_path / "fedsearch.toml", work)}" '
            "federation.rounds=2 federation.clients_per_round=3"
        )
        # `flwr run --stream` returns when the run ends (one process, no polling).
        runner = procs.start("flwr-run", run_command(app_dir, run_config), dep.env())
        try:
            runner.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not finish in time:\n" + procs.log("flwr-run")[-3000:])
        started = re.search(r"Successfully started run (\d+)", procs.log("flwr-run"))
        assert runner.returncode == 0 and started, procs.log("flwr-run")[-3000:]
        run_id = int(started.group(1))
        assert _run_status(dep, run_id) == "finished:completed", procs.log("flwr-run")[-6000:]
        for device in devices[:3]:
            assert procs.procs[device.info.name].poll() is None, procs.log(device.info.name)

        versions = list_versions(work / "registry")
        assert [v.name for v in versions] == ["v0001", "v0002"], procs.log("flwr-run")[-3000:]
        manifest = verify_version(versions[-1], load_public_key(dep.signing_pub))
        assert manifest["round"] == 2 and manifest["secure_aggregation"] is True
        assert manifest["privacy"]["epsilon"] > 0  # the user-level ledger was charged
        other = init_deployment(tmp_path / "other", info)
        with pytest.raises(SignatureError):
            verify_version(versions[-1], load_public_key(other.signing_pub))
        for device in devices[:3]:
            state = device.open_store().load_state()
            assert state.info.get("rounds_trained") == 2
    finally:
        procs.stop_all()
    for name, proc in procs.procs.items():
        assert proc.poll() is not None, f"{name} still running"
