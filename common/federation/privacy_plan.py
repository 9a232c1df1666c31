"""The user-level DP parameters of one federated run, derived once from its settings.

The ledger (what epsilon the rounds spend), the DP wrapper (how much noise the sum gets) and
the strategy (the fixed denominator of the average) must agree on the same numbers; they all
read them from one ``UserLevelDP``.

- ``sample_rate`` q: each device joins a round independently with probability
  clients_per_round / population (Poisson sampling, what the accountant assumes);
- ``expected_devices``: q * population, the fixed denominator of the average, so one device
  moves the average by at most ``clipping_norm`` / expected_devices;
- ``noise_multiplier`` sigma: the sum of the clipped updates gets Gaussian noise of standard
  deviation sigma * ``clipping_norm``;
- ``delta``: the configured one, else 1 / population.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.federation.run_spec import RunSpec


@dataclass(frozen=True)
class UserLevelDP:
    """See the module doc."""

    clipping_norm: float
    noise_multiplier: float
    sample_rate: float
    expected_devices: int
    delta: float
    epsilon_budget: float

    @classmethod
    def from_spec(cls, spec: RunSpec) -> UserLevelDP | None:
        """The run's plan, or None when user-level DP is off."""
        federation = spec.config.federation
        if not federation.dp:
            return None
        return cls(
            clipping_norm=federation.clipping_norm,
            noise_multiplier=federation.noise_multiplier,
            sample_rate=spec.sample_rate,
            expected_devices=spec.expected_devices,
            delta=spec.delta_user,
            epsilon_budget=federation.epsilon_user,
        )
