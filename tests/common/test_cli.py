"""The command line starts fast: registering every command imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "opacus", "transformers", "open_clip", "faiss", "ray")
SCRIPT = """
import sys
from common.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_lists_every_command_without_importing_a_heavy_library():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    *_, imported = done.stdout.splitlines()
    assert imported == "", f"`fedsearch --help` imported {imported}"
    for command in ("simulate", "serve", "device", "deploy", "distill", "demo"):
        assert command in done.stdout
