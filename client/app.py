"""The Flower ClientApp: one shopper's device (flwr 1.41 legacy client + mods).

A device trains its copy of the global query adapter on its own search log
(``client.local_training``) and replies with ONLY its adapter weights, an aggregation weight
of 1 and scalar metrics. Its user vector and privacy accountant stay in its own store
(``client.store``); evaluation replies carry metric sums over its held-out searches.

Mods, outermost first: ``secaggplus_mod`` (SecAgg+ masking; the server sees only the sum)
then ``fixedclipping_mod`` (clips the update to the norm C the server's DP wrapper sends;
``clipping_mod`` lets a declining device's zero update through, which flwr 1.41 cannot),
so the update is clipped before it is quantized and masked. Each is on when the run's
config says so; a device whose config requires it refuses a round that lacks it.

Where the device's data comes from is injected (``source``): on a real device, the
encrypted store of its device folder (``stored_device``, node config ``device-dir``); in a
simulation, the simulated population (``simulation.devices``). The ClientApp itself never
depends on the simulator.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import parameters_to_ndarrays

from client.device import Device, training_data
from client.local_training import train_local
from client.store import DeviceStore, PersonalState
from common.config import ConfigError
from common.data.searches import DeviceData
from common.evaluation.protocol import evaluate_searches, flat_metrics
from common.federation.run_spec import ROUND_KEY, RunSpec
from common.federation.secure_masks import install_secure_masks
from common.model.adapter import QueryAdapter
from common.model.personalization import user_vector
from common.model.ranking_loss import ranking_loss, search_tensors

# SecAgg+ masks from the full agreed secret, as the server's (Flower issue #7522).
install_secure_masks()


@dataclass
class LocalDevice:
    """What one device holds: its search log, the public item vectors, its private store."""

    data: DeviceData
    item_vectors: np.ndarray
    store: DeviceStore
    index: int | None  # the simulated device's partition; None on a real device


class AdapterClient(NumPyClient):
    """Trains and evaluates the global query adapter on one device."""

    def __init__(self, device: LocalDevice, spec: RunSpec) -> None:
        self.device = device
        self.spec = spec
        self.config = spec.config

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        """The initial (identity) adapter, the same on every device for a given seed."""
        torch.manual_seed(self.config.federation.seed)
        dim = self.device.item_vectors.shape[1]
        return QueryAdapter(dim, self.config.adapter.rank).get_weights()

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list, int, dict]:
        adapter = QueryAdapter.from_weights(parameters)
        result = train_local(
            adapter,
            self.device.data.train,
            self.device.item_vectors,
            self.config.device,
            self.config.adapter,
            self._state().accountant,
            seed=self._seed(int(config[ROUND_KEY])),
        )

        def record(state: PersonalState) -> PersonalState:
            # under the store lock: an SDK update of the user vector meanwhile is kept
            state.accountant = result.accountant
            trained = int(state.info.get("rounds_trained", 0))
            state.info["rounds_trained"] = trained + (0 if result.declined else 1)
            return state

        self.device.store.update_state(record)
        # Uniform weight 1: under user-level DP every device counts once (sensitivity C).
        # A device that declines sends the global weights back: a zero update.
        weights = parameters if result.declined else result.weights
        return weights, 1, result.metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        adapter = QueryAdapter.from_weights(parameters)
        user = self._state().user_vector
        test, vectors = self.device.data.test, self.device.item_vectors
        evaluation = self.config.evaluation
        sums = {
            "base": evaluate_searches(test, vectors, k=evaluation.k),
            "adapter": evaluate_searches(test, vectors, adapter=adapter, k=evaluation.k),
            "personal": evaluate_searches(
                test,
                vectors,
                adapter=adapter,
                user=user,
                beta=evaluation.beta,
                candidates=evaluation.candidates,
                k=evaluation.k,
            ),
        }
        return self._test_loss(adapter), len(test), flat_metrics(sums)

    def _state(self) -> PersonalState:
        """The private state; the user vector (mean of clicked items) is built on first use."""
        state = self.device.store.load_state()
        if state.user_vector is not None:
            return state

        def build(state: PersonalState) -> PersonalState:
            if state.user_vector is None:
                clicked = [s.clicked for s in self.device.data.train]
                state.user_vector = user_vector(self.device.item_vectors[clicked])
            return state

        return self.device.store.update_state(build)

    def _seed(self, server_round: int) -> int:
        """Reproducible per device and round in simulation; from the OS on a real device,
        where a seed derived from public values would make the DP noise predictable."""
        if self.device.index is None:
            return secrets.randbits(63)
        seq = np.random.SeedSequence([self.config.federation.seed, self.device.index, server_round])
        return int(seq.generate_state(1)[0])

    def _test_loss(self, adapter: QueryAdapter) -> float:
        """Mean ranking loss of the adapter on the held-out searches (0 if none)."""
        test = self.device.data.test
        if not test:
            return 0.0
        tensors = search_tensors(
            test,
            self.device.item_vectors,
            shown_negatives=self.config.adapter.shown_negatives,
            random_negatives=self.config.adapter.random_negatives,
            rng=np.random.default_rng(self._seed(0)),
        )
        with torch.no_grad():
            queries, positives, negatives = tensors
            losses = ranking_loss(
                adapter(queries), positives, negatives, self.config.adapter.temperature
            )
        return float(losses.mean())


# --- where the device's data lives ----------------------------------------------------------

DeviceSource = Callable[[RunSpec, Mapping[str, Any]], LocalDevice]


def stored_device(spec: RunSpec, node_config: Mapping[str, Any]) -> LocalDevice:
    """A real device: the encrypted store of the device folder named by ``device-dir``."""
    if "device-dir" not in node_config:
        raise ConfigError("node config: device-dir is not set (fedsearch device join sets it)")
    device = Device(Path(str(node_config["device-dir"])))
    data, _, vectors = training_data(device, spec.config.population.holdout_fraction)
    return LocalDevice(data, vectors, device.open_store(), None)


# --- the ClientApp ----------------------------------------------------------------------------


def privacy_mod(spec: RunSpec | None) -> Mod:
    """SecAgg+ masking around client-side clipping, as the run's config asks."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        federation = _spec(spec, ctxt).config.federation
        chain = call_next
        if federation.dp:
            chain = _bind(clipping_mod, chain)
        if federation.secagg:
            chain = _bind(secaggplus_mod, chain)
        return chain(msg, ctxt)

    return mod


def clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod``, except that a zero update (a device that declined to
    train) is sent as it is: flwr 1.41 divides by the update's norm and fails on zero."""
    replies: list[Message] = []

    def run(inner: Message, context: Context) -> Message:
        replies.append(call_next(inner, context))
        return replies[-1]

    try:
        return fixedclipping_mod(msg, ctxt, run)
    except ZeroDivisionError:
        if replies and _is_zero_update(msg, replies[-1]):
            return replies[-1]
        raise


def _is_zero_update(msg: Message, reply: Message) -> bool:
    sent = compat.recorddict_to_fitins(msg.content, keep_input=True).parameters
    back = compat.recorddict_to_fitres(reply.content, keep_input=True).parameters
    return all(
        np.array_equal(a, b)
        for a, b in zip(parameters_to_ndarrays(sent), parameters_to_ndarrays(back), strict=True)
    )


def _bind(mod: Mod, call_next: ClientAppCallable) -> ClientAppCallable:
    return lambda msg, ctxt: mod(msg, ctxt, call_next)


def _spec(spec: RunSpec | None, context: Context) -> RunSpec:
    return spec or _spec_from_run_config(tuple(sorted(context.run_config.items())), context.run_id)


@functools.cache
def _spec_from_run_config(items: tuple, run_id: int) -> RunSpec:
    return RunSpec.from_run_config(dict(items), run_id)


def build_client_app(
    spec: RunSpec | None = None,
    *,
    source: DeviceSource = stored_device,
    outer_mods: Sequence[Mod] = (),
    inner_mods: Sequence[Mod] = (),
) -> ClientApp:
    """The ClientApp; ``spec`` None reads it from the Flower run config (``flwr run``).

    ``source(spec, node_config)`` gives the device's data and store (see the module doc).

    ``outer_mods`` wrap everything (they see what leaves the device); ``inner_mods`` sit
    inside the privacy mods (they see the client's reply before clipping and masking).
    """

    def client_fn(context: Context):
        torch.set_num_threads(1)
        run = _spec(spec, context)
        return AdapterClient(source(run, dict(context.node_config)), run).to_client()

    return ClientApp(client_fn=client_fn, mods=[*outer_mods, privacy_mod(spec), *inner_mods])


app = build_client_app()
