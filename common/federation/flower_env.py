"""The environment Flower's processes (SuperLink, SuperNode, ``flwr``) run in.

``flower-superlink`` and ``flower-supernode`` start ``flower-superexec`` by name, so this
interpreter's ``bin`` folder goes first on ``PATH``; telemetry and runtime dependency
installation (``uv sync`` of the app's dependencies) are off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BIN_DIR = Path(sys.executable).parent


def flower_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")])
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.update(extra)
    return env
