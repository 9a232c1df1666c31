"""``fedsearch audit``: the project's own privacy audit of a simulated federated run.

``audit_simulation`` runs a simulation made for auditing: ``canaries`` canary devices
(``simulation.canaries``) join the population and are sampled like everyone else, the
devices' plain payloads and the server's sums are recorded (``simulation.wiretap``), and
the run starts its own ledger so that the ledger's epsilon is this run's.
``audit_run`` then measures, on any finished run folder:

- the one-shot empirical epsilon of the canaries (``simulation.audit_estimates``) beside
  the ledger's epsilon, at the run's delta, per user, against whom the plan says;
- reconstruction of clicked items from one raw update and from what the server holds
  (runs with recorded payloads), and membership inference on the published adapter
  (``simulation.audit_attacks``; who took part is read from the simulated devices'
  stores).

The audit fails when the empirical epsilon's confidence interval lies above the ledger's
epsilon (the run leaked more than its accounting allows), and, on runs with recorded
payloads and noise planned on the devices, when the sums the server unmasked carry less
than ``NOISE_FLOOR`` of the planned noise (measured against the recorded payloads).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import Config, ConfigError
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.privacy.keystream import KeystreamRandom
from server.federation.app import initial_adapter
from simulation.audit_attacks import HitRate, held_sum_attack, membership_auc, raw_update_attack
from simulation.audit_estimates import EpsilonEstimate, empirical_epsilon
from simulation.broken_noise import write_broken_noise
from simulation.canaries import (
    CanarySettings,
    read_canary_settings,
    with_canaries,
    write_canary_settings,
)
from simulation.devices import cached_population, simulated_device
from simulation.engine import absolute_paths, default_run_dir, read_rounds, simulate
from simulation.loader import load_population
from simulation.population import Population
from simulation.wiretap import TAP_SETTINGS, read_tap

TAPS = "taps"
NOISE_FLOOR = 0.8  # least share of the planned noise the server's sum must carry


def audit_simulation(
    config: Config,
    population_name: str,
    *,
    canaries: int,
    held_out: int = 1000,
    num_devices: int | None = None,
    population: Population | None = None,
    run_dir: Path | None = None,
    break_noise: bool = False,
    verbose: bool = False,
) -> Path:
    """Run a simulation with canaries and taps for ``audit_run`` (see the module doc);
    ``break_noise`` removes the devices' noise unannounced (``simulation.broken_noise``)."""
    if config.federation.adaptive_clipping:
        raise ConfigError(
            "federation.adaptive_clipping: canaries are sized to a fixed clipping norm; "
            "audit with it set to false"
        )
    if population is None:
        population = load_population(
            population_name, config, num_devices=num_devices, seed=config.federation.seed
        )
    real = len(population.devices)
    population = with_canaries(population, canaries, seed=config.federation.seed)
    config = absolute_paths(config)
    folder = Path(run_dir).resolve() if run_dir else default_run_dir(config, population_name)
    dim = int(population.item_vectors.shape[1])
    weights = QueryAdapter(dim, config.adapter.rank).get_weights()
    settings = CanarySettings(
        devices=tuple(range(real, real + canaries)),
        held_out=held_out,
        update_size=PayloadCodec.for_weights(weights, 1.0, 0.0).update_size,
        clipping_norm=config.federation.clipping_norm,
        seed=config.federation.seed,
    )
    write_canary_settings(folder, settings)
    if break_noise:
        write_broken_noise(folder)
    simulate(
        config,
        population_name,
        population=population,
        run_dir=folder,
        wiretap=folder / TAPS,
        wiretap_positions=("plain",),
        reset_ledger=True,
        verbose=verbose,
    )
    return folder


@dataclass
class AuditReport:
    """The audit's figures for one run (None: not measurable on this run)."""

    run_dir: Path
    delta: float
    against: str
    ledger_epsilon: float | None
    canaries: tuple[int, int] | None = None  # inserted, held out
    empirical: EpsilonEstimate | None = None
    raw: HitRate | None = None
    held_members: HitRate | None = None
    held_others: HitRate | None = None
    membership: float | None = None
    participants: tuple[int, int] | None = None  # members, non-members
    noise_ratio: float | None = None  # measured / planned noise std in the server's sums
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # leakage in a run that promised nothing


def run_spec(run_dir: Path) -> RunSpec:
    """The spec of the simulation in ``run_dir``, from its Flower app's run config."""
    app = Path(run_dir) / "app" / "pyproject.toml"
    if not app.is_file():
        raise FileNotFoundError(f"RUN_DIR: {run_dir} holds no simulation (no app/pyproject.toml)")
    config = tomllib.loads(app.read_text("utf-8"))["tool"]["flwr"]["app"]["config"]
    return RunSpec.from_run_config(config, run_id=0)


def audit_run(run_dir: Path, *, seed: int = 0) -> AuditReport:
    """Measure what the run in ``run_dir`` leaks (see the module doc)."""
    spec = run_spec(Path(run_dir).resolve())
    rounds = [r for r in read_rounds(spec.run_dir) if "published" in r]
    if not rounds:
        raise ValueError(f"RUN_DIR: {run_dir} has no round that published a version")
    plan = PrivacyPlan.from_spec(spec)
    population = cached_population(spec)
    # a simulation's server is seeded: its first draw makes the starting adapter
    start = initial_adapter(spec, KeystreamRandom.from_seed(spec.config.federation.seed, "server"))
    published = QueryAdapter.load(Path(rounds[-1]["published"]) / ADAPTER_FILE).get_weights()
    ledger = rounds[-1].get("epsilon_user")
    report = AuditReport(spec.run_dir, plan.delta, plan.against_whom(), ledger)
    canaries = read_canary_settings(spec.run_dir)
    real = [i for i in range(len(population.devices)) if not canaries or i not in canaries.devices]
    if canaries is not None:
        inserted, held_out = canary_cosines(canaries, _flat(published) - _flat(start))
        report.canaries = (canaries.inserted, canaries.held_out)
        report.empirical = empirical_epsilon(inserted, held_out, delta=plan.delta, seed=seed)
    taps = _tap_folder(spec.run_dir)
    if taps is not None and (taps / "plain").is_dir():
        codec = PayloadCodec.for_weights(start, plan.clipping_norm, plan.stats_share)
        payloads = _round_payloads(read_tap(taps / "plain"))
        first = {n: codec.decode(p)[0] for n, p in payloads.get(1, {}).items()}
        _reconstruction(report, spec, plan, population, start, first, real, taps)
        if plan.devices_add_noise:
            report.noise_ratio = noise_ratio(plan, codec, payloads, taps / "server")
    _membership(report, spec, population, start, published, real)
    audit_verdict(report, plan)
    return report


def canary_cosines(settings: CanarySettings, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the model delta with the inserted and the held-out canary directions."""
    norm = float(np.sqrt(np.sum(delta * delta)))
    if norm == 0:
        raise ValueError("the published adapter equals the initial one: nothing to audit")
    count = settings.inserted + settings.held_out
    # elementwise, not BLAS: a thousand short dot products, no thread pool to wake
    cosines = np.array([np.sum(settings.direction(i) * delta) / norm for i in range(count)])
    return cosines[: settings.inserted], cosines[settings.inserted :]


def _reconstruction(
    report: AuditReport,
    spec: RunSpec,
    plan: PrivacyPlan,
    population: Population,
    start: list[np.ndarray],
    first: dict[int, list[np.ndarray]],
    real: list[int],
    taps: Path,
) -> None:
    """Both reconstruction attacks on round 1 (its starting adapter is the run's)."""
    members = [n for n in real if n in first]
    if members:
        report.raw = raw_update_attack(population, start, first, members)
    held = taps / "server" / "round-1.npy"
    if members and held.is_file():
        codec = PayloadCodec.for_weights(start, plan.clipping_norm, plan.stats_share)
        total, _ = codec.decode(np.load(held))
        lr = spec.config.federation.server_lr
        step = [lr * t / plan.expected_devices for t in total]
        others = [n for n in real if n not in first]
        report.held_members, report.held_others = held_sum_attack(
            population, start, step, members, others
        )


def _membership(
    report: AuditReport,
    spec: RunSpec,
    population: Population,
    start: list[np.ndarray],
    published: list[np.ndarray],
    real: list[int],
) -> None:
    """Membership inference; who trained is read from the simulated devices' own stores."""
    trained = {
        n
        for n in real
        if simulated_device(spec, {"partition-id": n}).store.load_state().info.get("rounds_trained")
    }
    participants = [n for n in real if n in trained]
    never = [n for n in real if n not in trained]
    if participants and never:
        report.participants = (len(participants), len(never))
        report.membership = membership_auc(population, start, published, participants, never)


def noise_ratio(
    plan: PrivacyPlan, codec: PayloadCodec, payloads: dict[int, dict[int, np.ndarray]], sums: Path
) -> float | None:
    """Std of (sum the server unmasked - sum of the payloads the devices handed SecAgg+)
    over the planned std of the devices' noise shares, pooled over the recorded rounds."""
    residuals, planned = [], []
    for round_number, sent in payloads.items():
        path = sums / f"round-{round_number}.npy"
        if not path.is_file() or not sent:
            continue
        residuals.append(np.load(path) - np.sum(list(sent.values()), axis=0))
        sigma = plan.sigma_device(codec.size) * np.sqrt(len(sent)) / plan.scale
        planned.append(np.full(codec.size, sigma))
    if not residuals:
        return None
    return float(np.std(np.concatenate(residuals) / np.concatenate(planned)))


def _round_payloads(entries: list[dict[str, Any]]) -> dict[int, dict[int, np.ndarray]]:
    """round -> node -> payload, from the plain taps' training replies."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for entry in entries:
        record = entry["records"].get("fitres.parameters")
        if entry["type"] != "train" or not record or not record["items"]:
            continue
        payload = np.asarray(next(iter(record["items"].values())), dtype=np.float64)
        out.setdefault(int(entry["round"]), {})[int(entry["node"])] = payload
    return out


def _tap_folder(run_dir: Path) -> Path | None:
    path = run_dir / TAP_SETTINGS
    if not path.is_file():
        return None
    return Path(json.loads(path.read_text("utf-8"))["folder"])


def _flat(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def audit_verdict(report: AuditReport, plan: PrivacyPlan) -> None:
    """Add the failed checks (or the leak of a run without DP) to ``report``."""
    if report.noise_ratio is not None and report.noise_ratio < NOISE_FLOOR:
        report.failures.append(
            f"the sums the server unmasked carry {report.noise_ratio:.0%} of the planned "
            "noise: the devices do not add what the plan and the ledger say"
        )
    estimate, ledger = report.empirical, report.ledger_epsilon
    if estimate is None:
        return
    if not plan.dp or ledger is None:
        if estimate.low > 0:
            report.notes.append(
                f"no user-level DP, and it shows: the canaries measure epsilon >= "
                f"{estimate.low:.2f} (lower end of the {estimate.confidence:.0%} CI)"
            )
        return
    if estimate.low > ledger:
        report.failures.append(
            f"empirical epsilon {estimate.epsilon:.2f} (95% CI from {estimate.low:.2f}) is "
            f"above the ledger's {ledger:.2f}: the run leaks more than its accounting allows"
        )


def format_audit(report: AuditReport) -> str:
    """The audit's short table, then one FAIL line per failed check, else a LEAK line for
    a run without DP whose canaries show it, else PASS."""
    lines = [
        f"privacy audit of {report.run_dir}",
        f"  every epsilon: delta {report.delta:.1e}, unit user; {report.against}",
        f"  {'figure':<46} {'value':>7}  reference",
    ]

    def row(name: str, value: float | None, reference: str = "") -> None:
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"  {name:<46} {shown:>7}  {reference}")

    row("ledger epsilon_user", report.ledger_epsilon, "" if report.ledger_epsilon else "no DP")
    if report.empirical is not None and report.canaries is not None:
        e = report.empirical
        row(
            f"empirical epsilon, {report.canaries[0]} canaries ({report.canaries[1]} unsent)",
            e.epsilon,
            f"{e.confidence:.0%} CI [{e.low:.2f}, {e.high:.2f}], mu {e.mu:.2f}",
        )
    else:
        row("empirical epsilon", None, "the run has no canaries")
    if report.raw is None:
        row("reconstruction top-10", None, "the run recorded no payloads")
    else:
        r = report.raw
        row("reconstruction top-10, one raw update", r.rate, _chance(r))
        if r.types is not None:
            row(
                "  top 10's main article type, one clicked", r.types, f"chance {r.types_chance:.2f}"
            )
    if report.held_members is not None and report.held_others is not None:
        m, o = report.held_members, report.held_others
        row(
            "reconstruction top-10, sum the server holds",
            m.rate,
            f"non-members {o.rate:.2f}, {_chance(m)}",
        )
    if report.noise_ratio is not None:
        row("noise in the server's sums, std / planned", report.noise_ratio, "")
    if report.membership is not None and report.participants is not None:
        p, n = report.participants
        row("membership inference AUC, published adapter", report.membership, f"{p} in, {n} out")
    verdict = [f"FAIL: {f}" for f in report.failures] or [f"LEAK: {n}" for n in report.notes]
    lines += verdict or ["PASS: no check failed"]
    return "\n".join(lines)


def _chance(rate: HitRate) -> str:
    return f"chance {rate.chance:.2f} ({rate.devices} devices)"
