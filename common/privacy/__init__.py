"""Differential privacy: accounting, discrete Gaussian noise, keyed randomness.

Opacus (and with it torch) is imported only where it is used (local DP-SGD, the RDP of the
Gaussian), so that what a device runs for the SecAgg+ stages and the command line start
fast. Opacus adds a log handler to the root logger when it is imported
(``logging.basicConfig`` in ``opacus.utils.module_utils``), which printed every record of
loggers that propagate, Flower's round log in a ServerApp or ClientApp process included, a
second time: every module that imports Opacus calls ``drop_opacus_log_handler`` after it,
and importing this package drops one already there.
"""

from __future__ import annotations

import logging

OPACUS_DATE_FORMAT = "%m/%d/%Y %H:%M:%S"


def drop_opacus_log_handler() -> None:
    """Remove the root handler that Opacus installs at import (see the module doc)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        formatter = handler.formatter
        if formatter is not None and formatter.datefmt == OPACUS_DATE_FORMAT:
            root.removeHandler(handler)


drop_opacus_log_handler()
