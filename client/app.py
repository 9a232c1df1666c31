"""The Flower ClientApp: one shopper's device (flwr 1.41 legacy client + mods).

Each round a sampled device trains its copy of the global query adapter on its own search
log (``client.local_training``), evaluates the adapter the server sends for evaluation (the
candidate version, ``common.federation.candidate``) on its held-out searches, and replies
with ONE vector: its update clipped to the plan's norm followed by a few bounded statistics
(``common.federation.payload``), with aggregation weight 1 and no metrics. Under SecAgg+
that vector leaves the device quantized, masked and noised (``client.privacy``); its user
vector, accountant and search log never leave it.

Where the device's data comes from is injected (``source``): on a real device, the
encrypted store of its device folder (``stored_device``, node config ``device-dir``), with
the device's own policy and OS randomness; in a simulation, the simulated population
(``simulation.devices``). The ClientApp itself never depends on the simulator.

On a real device Flower starts a new ClientApp process for every message (four a round
under SecAgg+); the three SecAgg+ stages need no torch, so the training client
(``client.adapter_client``) and torch are imported only for the training message.

A real device reads its own config only: its data, privacy policy and budget come from its
device folder (node config ``device-dir``, set by the device's own ``device join``, and its
``device.toml``), and of the server's run config it ignores every key that names a file or
folder (``SERVER_PATH_KEYS``: ``config-file``, ``run-dir``, ``paths.*``) and ``device.*``,
so a hostile run config cannot make it read another file of its disk or change its policy.
The settings devices must agree on with the server travel in the run config itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.local_device import LocalDevice, stored_device
from client.privacy import privacy_mod
from common.federation.prime_shamir import install_prime_shamir
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.federation.secure_masks import install_secure_masks
from common.federation.x25519_keys import install_x25519_keys

install_secure_masks()  # SecAgg+ masks keyed by the whole shared secret (server does too)
install_prime_shamir()  # SecAgg+ secret shares over GF(2**521 - 1), fast (server does too)
install_x25519_keys()  # SecAgg+ key agreement over X25519, fast (server does too)

DeviceSource = Callable[[RunSpec, Mapping[str, Any]], LocalDevice]
SERVER_PATH_KEYS = ("config-file", "run-dir")
DEVICE_IGNORED_SECTIONS = ("paths.", "device.")
# the encoder the server names is not looked up on a device: it checks published versions
# against the encoder its own vectors come from (``client.device.Device.base_model``)
UNUSED_BASE_MODEL = "(not used on a device)"


def build_client_app(
    spec: RunSpec | None = None,
    *,
    source: DeviceSource = stored_device,
    outer_mods: Sequence[Mod] = (),
    inner_mods: Sequence[Mod] = (),
    run_paths: bool = False,
) -> ClientApp:
    """The ClientApp; ``spec`` None reads it from the Flower run config (``flwr run``),
    without its paths unless ``run_paths`` (a simulation's devices live in its ``run-dir``;
    a real device reads its own config only: see the module doc).

    ``source(spec, node_config)`` gives the device (see the module doc). ``outer_mods`` wrap
    everything (they see what leaves the device); ``inner_mods`` sit inside the privacy mods
    (they see the device's payload before masking and noise).
    """

    def spec_of(context: Context) -> RunSpec:
        run_config = context.run_config if run_paths else device_run_config(context.run_config)
        return spec or _spec_from_run_config(tuple(sorted(run_config.items())))

    def device_of(context: Context) -> LocalDevice:
        run = spec_of(context)
        return _device(source, run, tuple(sorted(context.node_config.items())))

    def client_fn(context: Context):
        import torch  # the training path only (see ``client.adapter_client``)

        from client.adapter_client import AdapterClient

        torch.set_num_threads(1)
        return AdapterClient(device_of(context), spec_of(context)).to_client()

    privacy = privacy_mod(
        plan_of=lambda ctxt: PrivacyPlan.from_spec(spec_of(ctxt)),
        policy_of=lambda ctxt: device_of(ctxt).policy,
        noise_source=lambda ctxt, r: device_of(ctxt).random("noise", r),
    )
    return ClientApp(client_fn=client_fn, mods=[*outer_mods, privacy, *inner_mods])


def device_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The server's run config as a real device takes it (see the module doc)."""
    kept = {
        key: value
        for key, value in run_config.items()
        if key not in SERVER_PATH_KEYS and not key.startswith(DEVICE_IGNORED_SECTIONS)
    }
    return kept | {"base-model": UNUSED_BASE_MODEL}


@functools.cache
def _spec_from_run_config(items: tuple) -> RunSpec:
    return RunSpec.from_run_config(dict(items), run_id=0)


@functools.lru_cache(maxsize=4096)
def _device(source: DeviceSource, spec: RunSpec, node_items: tuple) -> LocalDevice:
    """One ``LocalDevice`` per node and run in a process (the SecAgg+ stages of a round and
    the rounds of a run reuse it; its store is read afresh each time)."""
    return source(spec, dict(node_items))


app = build_client_app()
