"""Silently broken DP, on purpose: a simulation-only fault that the privacy audit must catch.

``write_broken_noise(run_dir)`` makes every simulated device of that run take its noise
share back out of the masked vector before it leaves (``silent_noise_mod``, placed between
the outer taps and the device's privacy chain): the server then unmasks the exact sum while
the plan, the manifests and the ledger still say the devices add noise. Only the
simulation's ClientApp carries the mod and only a file in the simulation's run folder
switches it on; no device or federation setting reaches it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from common.federation.privacy_plan import MODULUS, PrivacyPlan
from common.federation.run_spec import RunSpec
from common.privacy.discrete_gaussian import discrete_gaussian
from simulation.devices import simulated_device

BROKEN_NOISE_FILE = "broken-noise"


def write_broken_noise(run_dir: Path) -> None:
    """Switch the devices' noise off, unannounced, in the run in ``run_dir``."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / BROKEN_NOISE_FILE).write_text("noise removed on purpose\n", "utf-8")


def silent_noise_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    run_dir = str(ctxt.run_config.get("run-dir", ""))
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    stage = str(configs.get(Key.STAGE, "")) if configs is not None else ""
    reply = call_next(msg, ctxt)  # SecAgg+ consumes the message's records
    if not _broken(run_dir) or stage != Stage.COLLECT_MASKED_VECTORS or reply.has_error():
        return reply
    spec = _spec(tuple(sorted(ctxt.run_config.items())))
    plan = PrivacyPlan.from_spec(spec)
    if not plan.devices_add_noise:
        return reply
    # the device's own noise stream for this round, drawn again in the same order
    device = simulated_device(spec, dict(ctxt.node_config))
    rng = device.random("noise", int(msg.metadata.group_id or 0))
    record = reply.content.config_records[RECORD_KEY_CONFIGS]
    arrays = [bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])]
    sigma = plan.sigma_device(sum(a.size for a in arrays[1:]))
    cleaned = [arrays[0]]
    for array in arrays[1:]:
        noise = discrete_gaussian(sigma, array.size, rng).reshape(array.shape)
        cleaned.append(np.mod(array.astype(np.int64) - noise, MODULUS))
    record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in cleaned]
    return reply


@functools.cache
def _broken(run_dir: str) -> bool:
    return bool(run_dir) and (Path(run_dir) / BROKEN_NOISE_FILE).is_file()


@functools.cache
def _spec(items: tuple) -> RunSpec:
    return RunSpec.from_run_config(dict(items), run_id=0)
