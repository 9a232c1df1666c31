"""A Flower SuperLink in simulation mode, started and stopped by the simulation itself.

``flwr run`` submits an app to a SuperLink; in simulation mode the SuperLink runs the app's
ServerApp and a virtual SuperNode per device on Flower's simulation runtime (Ray). This one
listens on 127.0.0.1 at a free port, keeps its Flower files in ``home`` (``FLWR_HOME``, with
its process id in ``superlink.pid``), and is stopped on exit with its process group and every
process it started (the simulation runtime and Ray included).

With ``ray_address`` the simulation runtime joins that existing Ray cluster instead of
starting a local one (Ray reads ``RAY_ADDRESS``); without it, the runtime starts its own Ray
even when a cluster started with ``ray start`` runs on this machine. With ``signing_key``
the ServerApp signs the versions it publishes with that key
(``common.security.signing.publisher``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil

from common.federation.flower_env import flower_env
from common.security.signing import SIGNING_KEY_ENV

SIMULATION_CONNECTION = "simulation"
START_TIMEOUT_S = 120.0
PID_FILE = "superlink.pid"


class SuperLinkError(RuntimeError):
    """The local SuperLink did not start."""


class LocalSuperLink:
    """Context manager: a simulation-mode SuperLink and a ``flwr`` CLI connection to it."""

    def __init__(
        self, home: Path, *, ray_address: str = "", signing_key: Path | None = None
    ) -> None:
        self.home = Path(home)
        self.ray_address = ray_address
        self.signing_key = signing_key
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment of the SuperLink and of the ``flwr`` CLI talking to it."""
        extra = {"FLWR_HOME": str(self.home)}
        # "local": a Ray of its own even when `ray start` runs a cluster on this machine
        extra["RAY_ADDRESS"] = self.ray_address or "local"
        if self.signing_key is not None:
            extra[SIGNING_KEY_ENV] = str(self.signing_key)
        return flower_env(**extra)

    def __enter__(self) -> LocalSuperLink:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{SIMULATION_CONNECTION}"\n\n'
            f'[superlink.{SIMULATION_CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n',
            encoding="utf-8",
        )
        command = ["flower-superlink", "--insecure", "--simulation"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with (self.home / "superlink.log").open("wb") as log:
            self._process = subprocess.Popen(
                command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        (self.home / PID_FILE).write_text(str(self._process.pid), encoding="utf-8")
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise SuperLinkError(f"flower-superlink exited: see {self.home / 'superlink.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SuperLinkError(f"flower-superlink did not listen within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Terminate the SuperLink's process group and every process it started (Flower's
        SuperExec runs the simulation runtime, and with it Ray, in a session of its own);
        kill what is left after 10 s."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            descendants = psutil.Process(self._process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        group = os.getpgid(self._process.pid)
        os.killpg(group, signal.SIGTERM)
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self._process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(group, signal.SIGKILL)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
