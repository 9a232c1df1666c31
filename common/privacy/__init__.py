"""Differential privacy: accounting, discrete Gaussian noise, keyed randomness.

Importing this package imports Opacus and takes back the log handler that Opacus adds to
the root logger when it is imported (``logging.basicConfig`` in
``opacus.utils.module_utils``): that handler printed every record of loggers that
propagate, Flower's round log in a ServerApp or ClientApp process included, a second time.
"""

from __future__ import annotations

import logging

import opacus  # noqa: F401  (imported here so that its handler is removed below)

OPACUS_DATE_FORMAT = "%m/%d/%Y %H:%M:%S"


def drop_opacus_log_handler() -> None:
    """Remove the root handler that Opacus installs at import (see the module doc)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        formatter = handler.formatter
        if formatter is not None and formatter.datefmt == OPACUS_DATE_FORMAT:
            root.removeHandler(handler)


drop_opacus_log_handler()
