"""The README's deployment walkthrough, run as written: the ``bash`` blocks of "Try it on one
machine (three devices)" are read from README.md and run in a temporary project folder on
127.0.0.1 (Flower's Deployment Engine: SuperLink with TLS and SuperNode authentication, the
Fleet gateway, three registered devices, two rounds with DP and SecAgg+, the search
service), with free ports, a small copy of the data and a tiny pretrained encoder. Each
step's outcome is checked; an unregistered device and a device that registers itself
through the gateway are refused. Every process is started in its own session and stopped
by the test, also on failure."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from client.commands import EXIT_NOT_REGISTERED
from client.device import Device
from client.store import KEY_ENV
from common.config import ENCODER_DIR_ENV
from common.security.app_signing import APP_SIGNATURE_FILE
from common.security.signing import load_public_key, verify_version
from common.security.versions import list_versions
from server.deploy.commands import APP_DIR
from server.deploy.layout import Deployment, run_command

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
SECTION = ("### Try it on one machine (three devices)", "### Notes")
LONG_RUNNING = ("fedsearch deploy superlink", "fedsearch deploy gateway", "fedsearch serve")
CUSTOMERS = 5  # of the real Online Retail sample: a small catalog, encoded in seconds
STEP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300


def walkthrough_blocks(text: str) -> list[str]:
    """The ``bash`` blocks of the walkthrough section, dedented, in order."""
    start = text.index(SECTION[0])
    section = text[start : text.index(SECTION[1], start)]
    blocks = re.findall(r"^( *)```bash\n(.*?)^\1```", section, flags=re.M | re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, a ``for`` loop up to ``done``,
    comment lines left out."""
    out: list[str] = []
    buffer = ""
    for line in block.splitlines():
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buffer = f"{buffer}\n{line}" if buffer else line
        open_loop = buffer.startswith("for ") and not re.search(r"\bdone\b", buffer)
        if line.endswith("\\") or open_loop:
            continue
        out.append(buffer)
        buffer = ""
    assert not buffer, f"unterminated command in README: {buffer}"
    return out


def substitute(block: str, replacements: dict[str, str]) -> str:
    """The block with the README's fixed ports replaced; each pattern must occur (so the
    README and this test cannot drift apart silently)."""
    for old, new in replacements.items():
        assert old in block, f"README walkthrough no longer contains {old!r}"
        block = block.replace(old, new)
    return block


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


class Shell:
    """Runs commands with ``bash`` in the project folder; long-running ones in their own
    session, stopped (whole process group) by ``stop_all``. Records each step's time."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.background: dict[str, subprocess.Popen] = {}
        self.times: list[tuple[str, float]] = []

    def run(self, command: str, timeout_s: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
        start = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        took = time.monotonic() - start
        self.times.append((command.splitlines()[0][:70], took))
        with (self.cwd / "transcript.txt").open("a", encoding="utf-8") as fh:
            fh.write(f"$ {command}\n# {took:.1f}s, exit {done.returncode}\n")
            fh.write(done.stdout[-4000:] + done.stderr[-2000:] + "\n")
        assert done.returncode == 0, f"$ {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def start(self, name: str, command: str) -> subprocess.Popen:
        with (self.cwd / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.cwd / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.background.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.background.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # children (SuperExec, apps) too
            proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _small_data(root: Path, retail_dir: Path, small_catalog: Path) -> Path:
    """A data folder: the first ``CUSTOMERS`` customers of the real retail sample (their own
    product table) and the 40-item fashion catalog the service indexes."""
    lines = (retail_dir / "sample_50_customers.csv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    customer = header.split(",").index("CustomerID")
    keep: list[str] = []
    for row in rows:
        keep.append(row.split(",")[customer] if "," in row else "")
        if len(set(keep)) > CUSTOMERS:
            keep.pop()
            break
    retail = root / "online_retail_uci"
    retail.mkdir(parents=True)
    with gzip.open(retail / "transactions.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join([header, *rows[: len(keep)]]) + "\n")
    (root / small_catalog.name).symlink_to(small_catalog)
    return root


def test_readme_walkthrough_runs_as_written(
    tmp_path: Path, retail_dir, small_catalog, tiny_checkpoint
) -> None:
    blocks = walkthrough_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 8, "the walkthrough's steps changed: update this test"
    port, superlink_port, serve_port = _free_port(), _free_port(), _free_port()
    runtime_base = _free_port() + 10
    _, encoder_folder, _ = tiny_checkpoint
    project = tmp_path / "project"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    env |= {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "FEDSEARCH_DATA_DIR": str(_small_data(tmp_path / "data", retail_dir, small_catalog)),
        ENCODER_DIR_ENV: str(encoder_folder.parent),
        "COLUMNS": "200",  # flwr's tables show whole cells
    }
    shell = Shell(project, env)
    ports = {"127.0.0.1:9092": f"127.0.0.1:{port}"}
    try:
        # 1. certificates and keys
        init = "fedsearch deploy init --dir deploy"
        ports_flags = f"--port {port} --superlink-port {superlink_port}"
        step1 = substitute(blocks[0], {init: f"{init} {ports_flags}"})
        for command in commands(step1):
            shell.run(command)
        assert json.loads((project / "deploy" / "deployment.json").read_text())["port"] == port

        # 2. SuperLink and Fleet gateway
        step2 = commands(substitute(blocks[1], ports))
        assert [c for c in step2 if c.startswith(LONG_RUNNING)] == step2 and len(step2) == 2
        for name, command in zip(("superlink", "gateway"), step2, strict=True):
            shell.start(name, command)
        _wait_for(lambda: _port_open(superlink_port), 60, "the SuperLink")
        _wait_for(lambda: _port_open(port), 60, "the Fleet gateway")

        # 3. three devices with real retail histories
        runtime = {"--runtime-port 910$i": f"--runtime-port $(({runtime_base}+i))"}
        step3 = substitute(blocks[2], ports | runtime)
        out = "".join(shell.run(c).stdout for c in commands(step3))
        assert out.count("imported ") == 3 and out.count("budget left") == 3, out
        assert all((project / f"dev{i}" / "auth.pub").is_file() for i in (1, 2, 3))

        # 4. registration
        out = "".join(shell.run(c).stdout for c in commands(blocks[3]))
        assert out.count("registered successfully") == 3, out
        assert len(re.findall(r"\bregistered\b", out.split("registered successfully")[-1])) >= 3

        # 5. the devices join; an unregistered one and a self-registration are refused
        (join,) = commands(blocks[4])
        assert join.rstrip().endswith("done") and "&" in join
        shell.start("devices", join)
        _refused_device(shell, port, runtime_base)

        # 6. two rounds with DP and SecAgg+, signed versions
        *prepare, run, listing = commands(blocks[5])
        for command in prepare:
            shell.run(command)
        ran = shell.run(run, timeout_s=RUN_TIMEOUT_S).stdout
        assert "signed the app for devices" in ran and "fedsearch deploy: signed v0002" in ran
        assert shell.log("devices").count("fedsearch: app verified") >= 3  # before its import
        assert "completed" in shell.run(listing).stdout
        assert shell.background["devices"].poll() is not None  # bash itself; nodes run on
        _wait_for(lambda: not _device_processes(project, alive=True), 60, "the ClientApps to end")
        assert not _device_processes(project, alive=False), "<defunct> ClientApp processes"
        work = project / "deploy" / "work"
        versions = list_versions(work / "registry")
        assert [v.name for v in versions] == ["v0001", "v0002"]
        signing_pub = load_public_key(project / "deploy" / "signing" / "signing.pub")
        manifest = verify_version(versions[-1], signing_pub)
        assert manifest["round"] == 2 and manifest["secure_aggregation"] is True
        assert manifest["base_model"].split(":")[1] == encoder_folder.name
        for i in (1, 2, 3):
            state = Device(project / f"dev{i}").open_store().load_state()
            assert state.info.get("rounds_trained") == 2  # the device's own count

        # 6b. an app nobody signed, sent straight to the SuperLink: every device refuses it
        _unsigned_app_refused(shell, project)
        assert [v.name for v in list_versions(work / "registry")] == ["v0001", "v0002"]
        for i in (1, 2, 3):
            state = Device(project / f"dev{i}").open_store().load_state()
            assert state.info.get("rounds_trained") == 2  # nothing ran on the device

        # 7. the service serves v0002, signatures checked, with no extra flag
        serve, curl = commands(blocks[6])
        serve = substitute(serve, {"fedsearch serve ": f"fedsearch serve --port {serve_port} "})
        curl = substitute(curl, {"127.0.0.1:8000": f"127.0.0.1:{serve_port}"})
        shell.start("serve", serve)
        _wait_for(lambda: _port_open(serve_port) or shell.background["serve"].poll() is not None,
                  STEP_TIMEOUT_S, "the search service")  # fmt: skip
        assert shell.background["serve"].poll() is None, shell.log("serve")[-3000:]
        answer = json.loads(shell.run(curl).stdout)
        assert answer["model"]["version"] == "v0002"
        assert answer["registry"]["signatures_checked"] is True
        assert answer["model"]["base_model"] == answer["encoder_version"]  # one encoder

        # 8. the device fetches v0002, verifies it and searches with its own copy
        service = f"http://127.0.0.1:{serve_port}"
        sync, search = "fedsearch device sync dev1", "fedsearch device search dev1"
        step8 = substitute(
            blocks[7], {sync: f"{sync} --from {service}", search: f"{search} --endpoint {service}"}
        )
        sync, search = commands(step8)
        assert "fetched v0001, v0002; holds v0002" in shell.run(sync).stdout
        out = shell.run(search).stdout
        assert "scored by device:v0002 (the service serves v0002)" in out and "  1. " in out
    finally:
        shell.stop_all()
        for name, took in shell.times:
            print(f"{took:6.1f}s  {name}")
    for name, proc in shell.background.items():
        assert proc.poll() is not None, f"{name} still running"


def _device_processes(project: Path, *, alive: bool) -> list[psutil.Process]:
    """The running ClientApp processes (``alive``), or the exited ones nobody waited for,
    under the project's ``fedsearch device join`` processes."""
    joins = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        command = " ".join(proc.info["cmdline"] or [])
        if "device join" in command and proc.info["cwd"] == str(project):
            joins.append(proc)
    found = []
    for join in joins:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in join.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    zombie = child.status() == psutil.STATUS_ZOMBIE
                    if zombie != alive and (zombie or "clientapp" in child.name()):
                        found.append(child)
    return found


def _unsigned_app_refused(shell: Shell, project: Path) -> None:
    """``flwr run`` of the staged app without its signature (what anyone with access to
    the SuperLink's Control API could send): each device logs its refusal before importing
    any of the app's code, and the run's only round is dropped."""
    unsigned = project / "unsigned-app"
    shutil.copytree(project / "deploy" / APP_DIR, unsigned)
    (unsigned / APP_SIGNATURE_FILE).unlink()
    refusal = "fedsearch: refusing the app sent to this device"
    before = shell.log("devices").count(refusal)
    settings = (
        f'num-devices=3 population="retail" run-dir="{project}/deploy/run-unsigned" '
        f'config-file="{project}/deploy/run.toml" federation.rounds=1 '
        "federation.clients_per_round=3 federation.stats_share=0 federation.epsilon_user=1000 "
        'federation.promote="always" federation.stage_timeout_s=20'
    )
    command = run_command(unsigned, settings, stream=True)
    env = {**shell.env, **Deployment(project / "deploy").env()}
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    _wait_for(lambda: shell.log("devices").count(refusal) >= before + 3, 60, "three refusals")
    assert "the app is not signed" in shell.log("devices").split(refusal)[-1][:300], done.stdout
    assert "round 1 recorded: dropped" in done.stdout, done.stdout[-3000:]


def _refused_device(shell: Shell, port: int, runtime_base: int) -> None:
    """A device that was not registered exits with the documented message; registering
    itself through the gateway fails (devices reach only the Fleet API)."""
    shell.run(
        f"fedsearch device init dev4 --superlink 127.0.0.1:{port} --ca deploy/ca/ca.crt "
        f"--signing-key deploy/signing/signing.pub --runtime-port {runtime_base + 4}"
    )
    intruder = shell.cwd / "intruder"
    intruder.mkdir()
    (intruder / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsearch"\n[superlink.fedsearch]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{shell.cwd / "dev4/ca.crt"}"\n'
    )
    sneaky = subprocess.run(
        ["flwr", "supernode", "register", "dev4/auth.pub", "fedsearch"],
        cwd=shell.cwd,
        env={**shell.env, "FLWR_HOME": str(intruder)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sneaky.returncode != 0 and "registered successfully" not in sneaky.stdout
    proc = shell.start("dev4", "fedsearch device join dev4")
    _wait_for(lambda: proc.poll() is not None, 60, "the unregistered device to exit")
    assert proc.returncode == EXIT_NOT_REGISTERED, shell.log("dev4")[-2000:]
    assert "dev4: the SuperLink refused this device: its key" in shell.log("dev4")
    assert "is not registered" in shell.log("dev4")
