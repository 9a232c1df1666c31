"""Simulation only: SecAgg+'s stochastic rounding repeats from run to run.

flwr 1.41 quantizes a device's payload with stochastic rounding drawn from numpy's global
generator. Before each message, this mod seeds that generator from the run's
``federation.seed``, the simulated device's partition, the round and the message type, so
that a simulation repeats exactly. Real devices never run it: their rounding stays
unpredictable.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from common.config import load_config


@lru_cache(maxsize=8)
def _run_seed(config_file: str) -> int:
    return load_config(config_file or None).federation.seed


def seeded_rounding_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    seed = _run_seed(str(ctxt.run_config.get("config-file", "")))
    parts = f"{seed}/{ctxt.node_config.get('partition-id')}/{msg.metadata.group_id}"
    np.random.seed(zlib.crc32(f"{parts}/{msg.metadata.message_type}".encode()))
    return call_next(msg, ctxt)
