"""Importing Opacus through fedsearch's modules leaves logging as it was: Flower's log
lines are printed once, whichever is imported first."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOG_ONCE = """
import logging
{imports}
from flwr.common.logger import log
log(logging.INFO, "round-line-%s", "x")
"""


@pytest.mark.parametrize(
    "imports",
    [
        "import opacus\nimport common.privacy",
        "from common.privacy import accounting as a\na.epsilon_at(a.gaussian_rdp(0.1, 1.0), 1e-5)",
        "import client.local_training",
    ],
)
def test_a_flower_log_line_is_printed_once(imports):
    done = subprocess.run(
        [sys.executable, "-c", LOG_ONCE.format(imports=imports)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert (done.stdout + done.stderr).count("round-line-x") == 1, done.stdout + done.stderr


def test_without_the_cleanup_opacus_repeats_it():
    """The failure this guards against: Opacus alone doubles the line."""
    done = subprocess.run(
        [sys.executable, "-c", LOG_ONCE.format(imports="import opacus")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert (done.stdout + done.stderr).count("round-line-x") == 2
