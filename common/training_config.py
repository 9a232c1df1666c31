"""The configuration sections of training: the adapter and its loss, the centralized
baseline, evaluation, the federation and the devices (``common.config`` assembles them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.config_section import ConfigError, Section


class AdapterConfig(Section):
    """The shared query adapter (of ``rank``) and its per-search ranking loss
    (``common.model.ranking_loss``) for both centralized and federated training: the
    clicked item against ``shown_negatives`` shown but unclicked items of the same
    impression and ``random_negatives`` items drawn from the catalog."""

    rank: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.05, gt=0)
    shown_negatives: int = Field(default=20, ge=0)
    random_negatives: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _some_negatives(self) -> AdapterConfig:
        if self.shown_negatives + self.random_negatives <= 0:
            raise ConfigError(
                "adapter.random_negatives: shown_negatives + random_negatives must be > 0"
            )
        return self


class CentralizedConfig(Section):
    """Centralized adapter training without privacy: the upper reference baseline.

    Up to ``epochs`` epochs. With ``patience`` > 0 each device's last train search is kept
    for validation, training stops after ``patience`` epochs without a better validation
    nDCG and the best epoch's adapter is kept (0: every epoch, every search). ``threads``:
    torch threads (0: torch's default; 1 is ~7x faster than 2 on a shared 2-core machine).
    """

    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=3, ge=0)
    batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    threads: int = Field(default=1, ge=0, description="0 = torch default")


class EvaluationConfig(Section):
    """Evaluation on held-out searches: metrics at ``k`` over the whole catalog. The personal
    rerank adds ``beta * cos(user, item)`` and ``attribute_beta`` times the device's
    attribute preferences (``common.model.personalization``) to the scores of the top
    ``candidates``; with ``facet_gate``, the candidates that have the catalog facets the
    query names stay above the rest (``common.model.query_facets``)."""

    k: int = Field(default=10, ge=1)
    candidates: int = 100
    beta: float = Field(default=0.2, ge=0)
    attribute_beta: float = Field(default=0.02, ge=0)
    facet_gate: bool = True

    @model_validator(mode="after")
    def _enough_candidates(self) -> EvaluationConfig:
        if self.candidates < self.k:
            raise ConfigError("evaluation.candidates: must be >= evaluation.k")
        return self


class FederationConfig(Section):
    """Federated training of the shared query adapter, ``rounds`` rounds.

    A device joins a round with probability ``clients_per_round / population`` (Poisson
    sampling). User-level DP (``dp``): each device clips its update to ``clipping_norm``;
    the sum of the updates carries Gaussian-like noise of ``noise_multiplier`` times the
    sensitivity. ``adaptive_clipping``: the norm starts at ``clipping_norm`` and follows,
    within [``clipping_ceiling`` / 64, ``clipping_ceiling``], the norm under which a
    ``clipping_quantile`` share of the devices' updates fit, learnt at ``clipping_lr``
    from the noised count of unclipped updates (``server.federation.adaptive_clipping``).
    ``noise = "devices"``: each device adds its share of discrete Gaussian noise to its
    quantized update before SecAgg+ masks it, calibrated so that the
    ``min_devices_fraction`` of the expected cohort that must survive a round already carry
    the whole noise (the server only ever unmasks a noised sum; fewer survivors and the
    round is dropped unseen). Rounds are built to survive ``dropout_tolerance`` of the sampled
    devices dropping at any stage (setup, key sharing, training, unmasking): SecAgg+'s
    neighbourhoods grow until that many dropouts leave every one able to unmask, and each
    stage waits at most ``stage_timeout_s`` for replies (a silent device counts as dropped).
    ``noise = "server"``: the server adds Gaussian noise to the
    sum it holds (protects against readers of published versions only). A run whose
    population ledger would pass ``epsilon_user`` at ``delta_user`` (0: 1 / (10 x
    population)) does not start; ledgers live in ``ledger_dir`` ("": <work_dir>/ledgers),
    one per population, and compose every run on it. SecAgg+ (``secagg``): keys shared
    with ``secagg_neighbours`` devices of the round; a ``secagg_threshold`` fraction of
    them must return shares to unmask. ``stats_share``: devices also report, through the
    same noised sum, whether they trained and how the published version ranks their
    held-out searches, within this share of the update's squared sensitivity (0: no
    federated evaluation). ``warm_start``: training starts from an adapter fitted on the
    public catalog alone (``warm_start_steps`` steps; no user data, no privacy cost) instead
    of the identity. The registry publishes a moving average of the global adapter
    with ``average_decay`` per round (0: the aggregate); training continues from the
    aggregate, moved by ``server_lr`` times the noised average update (with
    ``server_momentum``). ``promote``: ``"if-not-worse"`` publishes a round's adapter only
    once the next round's devices evaluated it and it is not worse than the served version
    by more than ``promote_margin_sd`` noise deviations (``server.federation.promotion``);
    ``"always"`` publishes every round's adapter unevaluated; ``"auto"``: the first on a
    deployed server, the second in simulations. ``sum_bound``: refuse a
    round whose noised payload sum is heavier than any honest cohort's could be (a
    poisoning check on the sum alone, ``server.federation.sum_bound``). ``seed`` makes
    simulations reproducible (cohorts and noise); it is never published and a deployed
    server ignores it.

    ``mechanism``: ``"dp-fedavg"`` samples the rounds as above and draws fresh noise each
    round (its epsilon relies on the sampling staying secret from whoever reads the
    models). ``"dp-ftrl"`` needs no sampling assumption: epochs of population //
    ``clients_per_round`` rounds, each device joining at one round of each epoch drawn
    uniformly, and the server adds tree-aggregated noise that is correlated across the
    rounds of an epoch (DP-FTRL, as in Gboard's training; requires ``noise =
    "server"``, a fixed clipping norm and no ``sum_bound``; ``server.federation.tree_noise``).
    """

    rounds: int = Field(default=30, ge=1)
    clients_per_round: int = Field(default=100, ge=1)
    seed: int = 0
    dp: bool = True
    noise: Literal["devices", "server"] = "devices"
    mechanism: Literal["dp-fedavg", "dp-ftrl"] = "dp-fedavg"
    noise_multiplier: float = Field(default=1.2, ge=0)
    clipping_norm: float = Field(default=1.0, gt=0)
    adaptive_clipping: bool = False
    clipping_quantile: float = Field(default=0.5, gt=0, lt=1)
    clipping_lr: float = Field(default=0.2, gt=0)
    clipping_ceiling: float = Field(default=10.0, gt=0)
    epsilon_user: float = Field(default=4.0, gt=0)
    delta_user: float = Field(default=0.0, ge=0, lt=1)
    min_devices_fraction: float = Field(default=0.6, gt=0, le=1)
    dropout_tolerance: float = Field(default=0.3, ge=0, lt=1)
    stage_timeout_s: float = Field(default=300.0, gt=0)
    ledger_dir: str = ""
    secagg: bool = True
    secagg_neighbours: int = Field(default=10, ge=2)
    secagg_threshold: float = Field(default=0.6, gt=0, le=1)
    stats_share: float = Field(default=0.0625, ge=0, le=1)
    warm_start: bool = True
    warm_start_steps: int = Field(default=600, ge=1)
    server_lr: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.0, ge=0, lt=1)
    client_cpus: int = Field(default=1, ge=1, description="CPUs per simulated device")
    publish: bool = True
    average_decay: float = Field(default=0.8, ge=0, lt=1)
    promote: Literal["auto", "if-not-worse", "always"] = "auto"
    promote_margin_sd: float = Field(default=2.0, ge=0)
    sum_bound: bool = False

    @model_validator(mode="after")
    def _noise_needs_secagg(self) -> FederationConfig:
        if self.dp and self.noise == "devices" and not self.secagg:
            raise ConfigError(
                'federation.noise: "devices" needs federation.secagg (without SecAgg+ the '
                'server would see each noised update); use noise = "server" without it'
            )
        return self

    @model_validator(mode="after")
    def _ftrl_needs_server_noise(self) -> FederationConfig:
        if not (self.dp and self.mechanism == "dp-ftrl"):
            return self
        if self.noise != "server":
            raise ConfigError(
                'federation.mechanism: "dp-ftrl" needs federation.noise = "server": the '
                "tree's noise is correlated across rounds, which the devices of one round "
                "cannot draw (the guarantee then holds against readers of published versions)"
            )
        if self.adaptive_clipping or self.sum_bound:
            raise ConfigError(
                'federation.mechanism: "dp-ftrl" needs a fixed clipping norm and no sum_bound '
                "(set federation.adaptive_clipping and federation.sum_bound to false)"
            )
        return self

    @model_validator(mode="after")
    def _adaptive_clipping_bounds(self) -> FederationConfig:
        if not self.adaptive_clipping:
            return self
        if not self.clipping_ceiling / 64 <= self.clipping_norm <= self.clipping_ceiling:
            raise ConfigError(
                "federation.clipping_norm: with adaptive clipping it is the starting norm "
                "and must lie in [clipping_ceiling / 64, clipping_ceiling]"
            )
        if self.stats_share == 0:
            raise ConfigError(
                "federation.adaptive_clipping: it counts unclipped updates through the "
                "devices' noised statistics, which federation.stats_share = 0 turns off"
            )
        return self

    @model_validator(mode="after")
    def _promotion_needs_evaluation(self) -> FederationConfig:
        if self.publish and self.promote == "if-not-worse" and self.stats_share == 0:
            raise ConfigError(
                'federation.promote: "if-not-worse" needs federated evaluation '
                '(federation.stats_share > 0); set promote = "always" to publish unevaluated'
            )
        return self

    def promotion_rule(self, *, simulated: bool) -> Literal["if-not-worse", "always"]:
        """``promote`` resolved: ``"auto"`` is ``"always"`` in a simulation (its report
        evaluates every version on the whole population) and ``"if-not-worse"`` elsewhere."""
        if self.promote != "auto":
            return self.promote
        if simulated:
            return "always"
        if self.publish and self.stats_share == 0:
            raise ConfigError(
                'federation.promote: "auto" on a deployed server judges each version by the '
                "federated evaluation, which federation.stats_share = 0 turns off; set "
                'promote = "always" to publish every round unevaluated'
            )
        return "if-not-worse"


class DeviceConfig(Section):
    """Local training on a device, and the privacy the device itself insists on.

    ``local_epochs`` over Poisson batches of expected size ``batch_size`` with a fresh
    ``optimizer`` each round ("sgd" uses ``momentum``). Record-level DP (``dp``) clips each
    search's gradient to ``max_grad_norm`` and adds ``noise_multiplier`` times that as noise;
    the device's accountant persists and it declines to pass ``epsilon_budget`` at ``delta``.

    The device's policy, checked against what the server announces for a round before the
    device trains, refusing the round otherwise: ``require_secagg`` (its update is only
    ever sent masked), ``require_noise`` (user-level DP on with noise added by the devices),
    ``min_noise_multiplier``, ``max_clipping_norm``, ``max_epsilon_user`` (the most the
    federation may plan to spend on its population; only ``inf`` accepts a run without
    user-level DP), ``max_epsilon_server`` (the most epsilon, at the run's delta, that the
    server's view of the rounds this device sent data in may reach: the devices' noise in
    each, without the sampling's amplification, which holds only against readers of
    published versions; past it the device declines rounds, ``client.privacy``).
    """

    local_epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=16, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=0.003, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    dp: bool = False
    noise_multiplier: float = Field(default=0.6, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    epsilon_budget: float = Field(default=30.0, gt=0)
    delta: float = Field(default=1e-4, gt=0, lt=1)
    require_secagg: bool = True
    require_noise: bool = True
    min_noise_multiplier: float = Field(default=0.5, ge=0)
    max_clipping_norm: float = Field(default=10.0, gt=0)
    max_epsilon_user: float = Field(default=10.0, gt=0)
    max_epsilon_server: float = Field(default=10.0, gt=0)
