"""What a device enforces before anything it computed leaves it: its own privacy policy,
SecAgg+ masking, and its share of the round's noise.

The device never trusts the server's settings. For every training message it rebuilds the
round's ``PrivacyPlan`` from the run's config and refuses the round (``PolicyRefusal``:
Flower sends the server an error reply, nothing else) when the plan falls below the
device's own minimums (``DevicePolicy``, from the device's config). In SecAgg+'s setup
stage it also checks that the quantization SecAgg+ will apply is the plan's, since the
noise share is sized in its integer units.

``privacy_mod`` chains, outermost first: the policy check, ``noise_mod`` (adds the device's
discrete Gaussian share to the masked vector SecAgg+ returns: integer noise added modulo
SecAgg+'s modulus survives unmasking exactly, so the server unmasks a noised sum) and
Flower's ``secaggplus_mod``. Without SecAgg+ (allowed only by a device whose policy does
not require it) the payload leaves as computed, and only server-side noise can apply.
Under adaptive clipping the plan is taken at the norm the round's fit config names
(``round_plan``), which the device refuses outside the run's bounds; its noise share
scales with that norm.

The population ledger's epsilon relies on Poisson sampling, which amplifies nothing
against the server: it drew the cohorts. So the device keeps its own account of what the
server's view of its rounds costs (``ServerView``: the RDP of the devices' noise in each
round it sent data in, unamplified, kept in its store) and declines a round, sending a
payload with no data in it, once that would pass ``device.max_epsilon_server``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from common.config import DeviceConfig
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE, PrivacyPlan
from common.privacy.accounting import ORDERS, epsilon_at
from common.privacy.discrete_gaussian import discrete_gaussian
from common.privacy.keystream import KeystreamRandom

NoiseSource = Callable[[Context, int], KeystreamRandom]
FIT_CONFIG_RECORD = "fitins.config"  # where Flower puts a training message's config


class PolicyRefusal(RuntimeError):
    """The round's plan is below what this device accepts; the message names the rule."""


@dataclass(frozen=True)
class DevicePolicy:
    """The device's own minimums (``device.require_*``, ``min_*``, ``max_*`` settings)."""

    require_secagg: bool
    require_noise: bool
    min_noise_multiplier: float
    max_clipping_norm: float
    max_epsilon_user: float

    @classmethod
    def from_config(cls, device: DeviceConfig) -> DevicePolicy:
        return cls(
            require_secagg=device.require_secagg,
            require_noise=device.require_noise,
            min_noise_multiplier=device.min_noise_multiplier,
            max_clipping_norm=device.max_clipping_norm,
            max_epsilon_user=device.max_epsilon_user,
        )

    def check(self, plan: PrivacyPlan) -> None:
        """Raise ``PolicyRefusal`` naming the first rule ``plan`` breaks."""
        if self.require_secagg and not plan.secagg:
            raise PolicyRefusal("device policy: SecAgg+ is required, the round runs without it")
        if self.require_noise and not plan.devices_add_noise:
            raise PolicyRefusal(
                "device policy: user-level DP with noise added by the devices is required"
            )
        if plan.dp and plan.noise_multiplier < self.min_noise_multiplier:
            raise PolicyRefusal(
                f"device policy: noise multiplier {plan.noise_multiplier:g} is below the "
                f"device's minimum {self.min_noise_multiplier:g}"
            )
        if plan.ceiling > self.max_clipping_norm:
            raise PolicyRefusal(
                f"device policy: clipping norm {plan.ceiling:g} is above the device's "
                f"maximum {self.max_clipping_norm:g}"
            )
        unbounded = not plan.dp and math.isinf(self.max_epsilon_user)  # explicitly accepted
        if not unbounded and (not plan.dp or plan.epsilon_budget > self.max_epsilon_user):
            budget = f"{plan.epsilon_budget:g}" if plan.dp else "unbounded (no DP)"
            raise PolicyRefusal(
                f"device policy: the federation may spend epsilon_user {budget}, above the "
                f"device's maximum {self.max_epsilon_user:g}"
            )


SERVER_VIEW_KEY = "server_view"  # in the device's store: {"rdp": [...], "delta": ..., "rounds"}


@dataclass(frozen=True)
class ServerView:
    """What the rounds a device sent data in cost against the server (see the module doc)."""

    rdp: np.ndarray
    delta: float
    rounds: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ServerView:
        saved = info.get(SERVER_VIEW_KEY) or {}
        rdp = np.asarray(saved.get("rdp", np.zeros(len(ORDERS))), dtype=np.float64)
        return cls(rdp, float(saved.get("delta", 0.0)), int(saved.get("rounds", 0)))

    @staticmethod
    def round_rdp(plan: PrivacyPlan, dim: int) -> np.ndarray | None:
        """One round's RDP as the server sees it (no amplification: it knows whom it
        sampled); None when the devices add no noise (then ``require_noise`` decides)."""
        if not plan.devices_add_noise:
            return None
        return replace(plan, sample_rate=1.0).round_rdp(dim)

    def epsilon(self) -> float:
        return epsilon_at(self.rdp, self.delta) if self.rounds else 0.0

    def after(self, rdp: np.ndarray, delta: float) -> ServerView:
        return ServerView(self.rdp + rdp, delta, self.rounds + 1)

    def to_info(self) -> dict[str, Any]:
        return {"rdp": self.rdp.tolist(), "delta": self.delta, "rounds": self.rounds}


def privacy_mod(
    plan_of: Callable[[Context], PrivacyPlan],
    policy_of: Callable[[Context], DevicePolicy],
    noise_source: NoiseSource,
) -> Mod:
    """The device's privacy chain for one message (see the module doc)."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        fit_config = msg.content.config_records.get(FIT_CONFIG_RECORD)
        plan = round_plan(plan_of(ctxt), fit_config or {})
        policy_of(ctxt).check(plan)
        if not plan.secagg:
            return call_next(msg, ctxt)
        masked = _bind(secaggplus_mod, call_next)
        return noise_mod(plan, noise_source)(msg, ctxt, masked)

    return mod


def round_plan(plan: PrivacyPlan, fit_config: Mapping[str, Any]) -> PrivacyPlan:
    """``plan`` at the round's clipping norm; ``PolicyRefusal`` if the run forbids it."""
    try:
        return plan.for_round(fit_config)
    except ValueError as exc:
        raise PolicyRefusal(f"device policy: {exc}") from None


def noise_mod(plan: PrivacyPlan, noise_source: NoiseSource) -> Mod:
    """Checks SecAgg+'s quantization at setup; adds the noise share to the masked vector."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(configs.get(Key.STAGE, "")) if configs is not None else ""
        if stage == Stage.SETUP and configs is not None:
            _check_quantization(plan, configs)
        reply = call_next(msg, ctxt)
        if stage == Stage.COLLECT_MASKED_VECTORS and plan.devices_add_noise:
            round_number = int(msg.metadata.group_id or 0)
            _add_noise_share(reply, plan, noise_source(ctxt, round_number))
        return reply

    return mod


def _check_quantization(plan: PrivacyPlan, configs: ConfigRecord) -> None:
    expected = {
        Key.CLIPPING_RANGE: plan.clip_range,
        Key.TARGET_RANGE: QUANTIZATION_RANGE,
        Key.MOD_RANGE: MODULUS,
        Key.MAX_WEIGHT: 1.0,
    }
    for key, value in expected.items():
        got = float(cast(float, configs.get(key, math.nan)))  # float() refuses a list
        if not math.isclose(got, value, rel_tol=1e-9):
            raise PolicyRefusal(f"SecAgg+ setup: {key} is {got:g}, the round's plan says {value:g}")


def _add_noise_share(reply: Message, plan: PrivacyPlan, rng: KeystreamRandom) -> None:
    """Add N_Z(0, sigma_device^2) to every masked value but SecAgg+'s weight factor."""
    if reply.has_error():
        return
    record = reply.content.config_records[RECORD_KEY_CONFIGS]
    arrays = [bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])]
    dim = sum(a.size for a in arrays[1:])
    sigma = plan.sigma_device(dim)
    noised = [arrays[0]]
    for array in arrays[1:]:
        noise = discrete_gaussian(sigma, array.size, rng).reshape(array.shape)
        noised.append(np.mod(array.astype(np.int64) + noise, MODULUS))
    record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in noised]


def _bind(mod: Mod, call_next: ClientAppCallable) -> ClientAppCallable:
    return lambda msg, ctxt: mod(msg, ctxt, call_next)
