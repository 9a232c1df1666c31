"""The report of one simulation run, written into its run folder.

::

    <run_dir>/
      metrics.jsonl        per round (server): devices, failures, the noised statistics,
                           epsilon_user, the published version
      summary.json         final metrics of the federated models and the baselines
      summary.md           the same as a table
      evaluation.json      every evaluated version's metrics, exact and as the server saw them
      metrics.png          nDCG@10 per round: exact (solid), as the server saw it (dotted)
      epsilon.png          user-level epsilon per round (the population's ledger)
      shoppers.json        the simulated shoppers' user vectors (``server.search.shoppers`` format)

The federated rows are the experimenter's view: the published versions evaluated on every
device's held-out searches, exactly, as the baselines are (a simulation knows the
population; a server only ever sees the noised statistics the devices sent, which the
plots show beside).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.config import Config, ConfigError  # noqa: E402
from common.evaluation.protocol import device_user_vector  # noqa: E402
from common.federation.privacy_plan import PrivacyPlan  # noqa: E402
from common.model.adapter import ADAPTER_FILE, QueryAdapter  # noqa: E402
from server.search.shoppers import FILE_NAME as SHOPPERS_FILE  # noqa: E402
from server.search.shoppers import write_shoppers  # noqa: E402
from simulation.devices import cached_population  # noqa: E402
from simulation.engine import SimulationResult, resume_simulation, simulate  # noqa: E402
from simulation.evaluation import evaluate_population  # noqa: E402
from simulation.loader import load_population  # noqa: E402
from simulation.memory import PeakMemory  # noqa: E402
from simulation.oracle import ORACLE, ORACLE_RERANK  # noqa: E402
from simulation.poisoning import AttackPlan, attack_summary, read_attack_settings  # noqa: E402
from simulation.population import Population, describe  # noqa: E402

METRICS = ("HR@10", "nDCG@10", "MRR")
MAX_SHOPPERS = 200
FEDERATED = {
    "base": "federated eval: base encoder",
    "adapter": "federated: base + global adapter",
    "personal": "federated: + personal rerank",
}


MAX_EVALUATED_VERSIONS = 12


def evaluate_versions(result: SimulationResult, population: Population) -> dict[int, dict]:
    """Round -> exact ``{mode: metrics}`` of the version published that round (round 0: no
    adapter), for at most ``MAX_EVALUATED_VERSIONS`` evenly spaced rounds and the last."""
    settings = result.spec.config.evaluation
    published = [(r["round"], r["published"]) for r in result.rounds if r.get("published")]
    step = max(1, math.ceil(len(published) / MAX_EVALUATED_VERSIONS))
    chosen = published[::step] + (
        [published[-1]] if published[-1:] != published[::step][-1:] else []
    )
    out = {}
    for round_number, folder in [(0, None), *chosen]:
        adapter = QueryAdapter.load(Path(folder) / ADAPTER_FILE) if folder else None
        evaluation = evaluate_population(
            population,
            adapter=adapter,
            beta=settings.beta,
            candidates=settings.candidates,
            attribute_beta=settings.attribute_beta,
            facet_gate=settings.facet_gate,
        )
        out[round_number] = evaluation.overall
    return out


def final_metrics(evaluations: dict[int, dict]) -> dict[str, dict[str, float]]:
    """``{mode: {metric: value}}`` of the last evaluated version (every device)."""
    last = evaluations[max(evaluations)]
    return {mode: {m: last[mode].get(m) for m in (*METRICS, "count")} for mode in FEDERATED}


def summarize(
    result: SimulationResult,
    evaluations: dict[int, dict],
    baselines: dict[str, dict[str, float]] | None = None,
    peak_memory_bytes: int | None = None,
    attack: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = result.spec
    federation = spec.config.federation
    final = final_metrics(evaluations)
    rows = {name: dict(values) for name, values in (baselines or {}).items()}
    rows.update({FEDERATED[mode]: values for mode, values in final.items()})
    base = final["base"]["nDCG@10"]
    personal = final["personal"]["nDCG@10"]
    central = rows.get("centralized+personal", {}).get("nDCG@10")
    return {
        "run_dir": str(spec.run_dir),
        "population": spec.population,
        "devices": spec.num_devices,
        "rounds": len(result.rounds),
        "clients_per_round": federation.clients_per_round,
        "dp": federation.dp,
        "secagg": federation.secagg,
        "epsilon_user": result.final.get("epsilon_user"),
        "delta_user": spec.delta_user if federation.dp else None,
        "against": PrivacyPlan.from_spec(spec).against_whom(),
        "noise_multiplier": federation.noise_multiplier if federation.dp else None,
        "clipping_norm": federation.clipping_norm if federation.dp else None,
        "record_level_dp": spec.config.device.dp,
        "wall_seconds": round(result.wall_seconds, 1),
        "peak_memory_mb": round(peak_memory_bytes / 2**20) if peak_memory_bytes else None,
        "personal_vs_base_ndcg": personal / base if base and personal is not None else None,
        "share_of_centralized_gain": _gain_share(base, personal, central),
        "models": rows,
        "attack": attack,
        "publication": publication(result.rounds, federation.promotion_rule(simulated=True)),
    }


def publication(rounds: list[dict[str, Any]], promote: str) -> dict[str, Any]:
    """What the rounds published under the promotion rule (``server.federation.promotion``)."""
    return {
        "promote": promote,
        "published": [Path(r["published"]).name for r in rounds if r.get("published")],
        "not_promoted": [r["not_promoted"] for r in rounds if "not_promoted" in r],
        "awaiting_evaluation": rounds[-1].get("candidate") if rounds else None,
    }


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, with a header line on the run."""
    eps = summary["epsilon_user"]
    privacy = (
        f"user-level DP eps={eps:.2f} delta={summary['delta_user']:.2g} (unit: user)"
        if summary["dp"] and eps is not None
        else "no user-level DP"
    )
    lines = [
        f"{summary['population']}: {summary['devices']} devices, {summary['rounds']} rounds, "
        f"~{summary['clients_per_round']} devices/round, {privacy}, "
        f"SecAgg+ {'on' if summary['secagg'] else 'off'}, federation {summary['wall_seconds']} s"
        + (f", peak memory {summary['peak_memory_mb']} MB" if summary["peak_memory_mb"] else ""),
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, values in summary["models"].items():
        cells = [_fmt(values.get(m)) for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"privacy: {summary['against']}"]
    attack = summary.get("attack")
    if attack:
        lines.append(
            f"attack: {attack['kind']}, {attack['attackers']} devices ({attack['fraction']:.0%}), "
            f"boost {attack['boost']:g}, defence {attack['defence']}; target item "
            f"{attack['target_item']} for {attack['target_query']!r}: rank "
            f"{attack['target_rank_base']} (base) -> {attack['target_rank']} (published adapter)"
        )
    lines += _publication_lines(summary.get("publication"))
    ratio = summary["personal_vs_base_ndcg"]
    if ratio is not None:
        lines += ["", f"personalized nDCG@10 / base nDCG@10 = {ratio:.3f}"]
    share = summary["share_of_centralized_gain"]
    if share is not None:
        lines.append(
            f"federated nDCG@10 gain over base = {share:.1%} of the centralized (+ personal) gain"
        )
    return "\n".join(lines)


def _publication_lines(publication: dict[str, Any] | None) -> list[str]:
    if not publication:
        return []
    published = publication["published"]
    lines = [
        f"published {len(published)} version(s)"
        + (f" ({published[0]}..{published[-1]})" if published else "")
        + f", promote = {publication['promote']}"
    ]
    lines += [f"not promoted: {reason}" for reason in publication["not_promoted"]]
    if publication["awaiting_evaluation"] is not None:
        lines.append(
            f"round {publication['awaiting_evaluation']}'s adapter awaits its evaluation by "
            "a next round (--resume RUN_DIR with more federation.rounds)"
        )
    return lines


def _gain_share(base: float | None, federated: float | None, central: float | None) -> float | None:
    """(federated - base) / (centralized - base) nDCG@10, or None without a positive gain."""
    if base is None or federated is None or central is None or central <= base:
        return None
    return (federated - base) / (central - base)


def _fmt(value: Any) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"


def plot_metrics(
    result: SimulationResult,
    evaluations: dict[int, dict],
    baselines: dict[str, dict[str, float]] | None,
    path: Path,
) -> None:
    """nDCG@10 per round: exact evaluations (solid), the server's noised view (dotted), the
    baselines (dashed; not the oracles, near 1, which would flatten the curves)."""
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    rounds = sorted(evaluations)
    for mode, label in FEDERATED.items():
        line = ax.plot(rounds, [evaluations[r][mode]["nDCG@10"] for r in rounds], marker="o")
        line[0].set_label(label)
        seen = [(r["round"], r.get("fit", {}).get(f"{mode}.nDCG@10")) for r in result.rounds]
        seen = [(r, v) for r, v in seen if v is not None and math.isfinite(v)]
        if seen:
            ax.plot(*zip(*seen, strict=True), linestyle=":", color=line[0].get_color())
    for name, values in (baselines or {}).items():
        if name not in (ORACLE, ORACLE_RERANK) and values.get("nDCG@10") is not None:
            ax.axhline(values["nDCG@10"], linestyle="--", linewidth=1, color="grey", label=name)
    ax.set_xlabel("round (dotted: as the server saw it, noised)")
    ax.set_ylabel("nDCG@10")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_epsilon(result: SimulationResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    points = [(r["round"], r.get("epsilon_user")) for r in result.rounds]
    points = [(r, e) for r, e in points if e is not None]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", label="user-level epsilon (ledger)")
        ax.legend(fontsize=8)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shoppers(population: Population, limit: int = MAX_SHOPPERS) -> list[dict[str, Any]]:
    """The first ``limit`` simulated shoppers: user vector (mean of clicked items) and
    their most frequent queries."""
    out = []
    for device in population.devices[:limit]:
        queries = Counter(s.query for s in device.train if s.query).most_common(3)
        out.append(
            {
                "name": device.device_id,
                "description": "searches: " + ", ".join(q for q, _ in queries),
                "vector": device_user_vector(device, population.item_vectors),
            }
        )
    return out


def write_report(
    result: SimulationResult,
    population: Population,
    baselines: dict[str, dict[str, float]] | None = None,
    *,
    peak_memory_bytes: int | None = None,
) -> dict[str, Any]:
    """Write summary, plots and shoppers into the run folder; return the summary."""
    run_dir = result.run_dir
    evaluations = evaluate_versions(result, population)
    summary = summarize(
        result, evaluations, baselines, peak_memory_bytes, attack=attack_figures(result, population)
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    (run_dir / "summary.md").write_text(table(summary) + "\n", "utf-8")
    (run_dir / "evaluation.json").write_text(json.dumps(evaluations, indent=1), "utf-8")
    plot_metrics(result, evaluations, baselines, run_dir / "metrics.png")
    plot_epsilon(result, run_dir / "epsilon.png")
    write_shoppers(
        run_dir / SHOPPERS_FILE,
        shoppers(population),
        encoder_version=str(population.info.get("encoder", "")),
    )
    return summary


def attack_figures(result: SimulationResult, population: Population) -> dict[str, Any] | None:
    """The run's attack (``simulation.poisoning``) against its last published version."""
    settings = read_attack_settings(result.run_dir)
    if settings is None:
        return None
    folders = [r["published"] for r in result.rounds if r.get("published")]
    adapter = QueryAdapter.load(Path(folders[-1]) / ADAPTER_FILE) if folders else None
    return attack_summary(settings, population.item_vectors, adapter)


def simulate_and_report(
    config: Config,
    population_name: str,
    *,
    num_devices: int | None = None,
    run_dir: Path | None = None,
    baselines: bool = True,
    reset_ledger: bool = False,
    ray_address: str = "",
    attack: AttackPlan | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Load the population, run the federation, the baselines and write the report
    (``fedsearch simulate``); return the summary (``table(summary)`` prints it)."""
    from simulation.baselines import run_baselines

    with PeakMemory() as memory:
        population = load_population(
            population_name, config, num_devices=num_devices, seed=config.federation.seed
        )
        if len(population.devices) < 2:
            raise ConfigError(f"population {population_name}: a federation needs >= 2 devices")
        print(describe(population))
        result = simulate(
            config,
            population_name,
            population=population,
            run_dir=run_dir,
            reset_ledger=reset_ledger,
            ray_address=ray_address,
            attack=attack,
            verbose=verbose,
        )
    reference = run_baselines(population, config).metrics if baselines else None
    return write_report(result, population, reference, peak_memory_bytes=memory.peak_bytes)


def resume_and_report(
    run_dir: Path, *, baselines: bool = True, ray_address: str = "", verbose: bool = False
) -> dict[str, Any]:
    """Finish the killed simulation in ``run_dir`` (``fedsearch simulate --resume``) and
    write its report; return the summary."""
    from simulation.baselines import run_baselines

    with PeakMemory() as memory:
        result = resume_simulation(run_dir, ray_address=ray_address, verbose=verbose)
    population = cached_population(result.spec)
    reference = run_baselines(population, result.spec.config).metrics if baselines else None
    return write_report(result, population, reference, peak_memory_bytes=memory.peak_bytes)
