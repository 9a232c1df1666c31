"""The report of one simulation run, written into its run folder.

::

    <run_dir>/
      metrics.jsonl        per round: fit summary, pooled evaluation, epsilon_user (server)
      privacy_ledger.json  the user-level ledger, round by round (server)
      summary.json         final metrics of the federated models and the baselines
      summary.md           the same as a table
      metrics.png          HR@10, nDCG@10 and MRR per round (baselines dashed)
      epsilon.png          user-level epsilon and the largest device (record-level) epsilon
      shoppers.json        the simulated shoppers' user vectors (``server.search.shoppers`` format)

The last round evaluates every device, so the summary's federated rows cover all held-out
searches, like the baselines.
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
from server.search.shoppers import FILE_NAME as SHOPPERS_FILE  # noqa: E402
from server.search.shoppers import write_shoppers  # noqa: E402
from simulation.engine import SimulationResult, simulate  # noqa: E402
from simulation.loader import load_population  # noqa: E402
from simulation.memory import PeakMemory  # noqa: E402
from simulation.population import Population, describe  # noqa: E402

METRICS = ("HR@10", "nDCG@10", "MRR")
MAX_SHOPPERS = 200
FEDERATED = {
    "base": "federated eval: base encoder",
    "adapter": "federated: base + global adapter",
    "personal": "federated: + personal rerank",
}


def final_metrics(result: SimulationResult) -> dict[str, dict[str, float]]:
    """``{mode: {metric: value}}`` of the last round's evaluation (every device)."""
    evaluation = result.final.get("evaluate", {})
    return {
        mode: {m: evaluation.get(f"{mode}.{m}") for m in (*METRICS, "count")} for mode in FEDERATED
    }


def summarize(
    result: SimulationResult,
    baselines: dict[str, dict[str, float]] | None = None,
    peak_memory_bytes: int | None = None,
) -> dict[str, Any]:
    spec = result.spec
    federation = spec.config.federation
    final = final_metrics(result)
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
        "noise_multiplier": federation.noise_multiplier if federation.dp else None,
        "clipping_norm": federation.clipping_norm if federation.dp else None,
        "record_level_dp": spec.config.device.dp,
        "wall_seconds": round(result.wall_seconds, 1),
        "peak_memory_mb": round(peak_memory_bytes / 2**20) if peak_memory_bytes else None,
        "personal_vs_base_ndcg": personal / base if base and personal is not None else None,
        "share_of_centralized_gain": _gain_share(base, personal, central),
        "models": rows,
    }


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, with a header line on the run."""
    eps = summary["epsilon_user"]
    privacy = (
        f"user-level DP eps={eps:.2f} delta={summary['delta_user']:.2g}"
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
    ratio = summary["personal_vs_base_ndcg"]
    if ratio is not None:
        lines += ["", f"personalized nDCG@10 / base nDCG@10 = {ratio:.3f}"]
    share = summary["share_of_centralized_gain"]
    if share is not None:
        lines.append(
            f"federated nDCG@10 gain over base = {share:.1%} of the centralized (+ personal) gain"
        )
    return "\n".join(lines)


def _gain_share(base: float | None, federated: float | None, central: float | None) -> float | None:
    """(federated - base) / (centralized - base) nDCG@10, or None without a positive gain."""
    if base is None or federated is None or central is None or central <= base:
        return None
    return (federated - base) / (central - base)


def _fmt(value: Any) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"


def plot_metrics(
    result: SimulationResult, baselines: dict[str, dict[str, float]] | None, path: Path
) -> None:
    rounds = [r["round"] for r in result.rounds]
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(5 * len(METRICS), 4), constrained_layout=True
    )
    for ax, metric in zip(axes, METRICS, strict=True):
        for mode, label in FEDERATED.items():
            values = [r.get("evaluate", {}).get(f"{mode}.{metric}") for r in result.rounds]
            ax.plot(rounds, [math.nan if v is None else v for v in values], marker="o", label=label)
        for name, values in (baselines or {}).items():
            if values.get(metric) is not None:
                ax.axhline(values[metric], linestyle="--", linewidth=1, label=name, color="grey")
        ax.set_xlabel("round")
        ax.set_title(metric)
    axes[-1].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_epsilon(result: SimulationResult, path: Path) -> None:
    rounds = [r["round"] for r in result.rounds]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    user = [r.get("epsilon_user") for r in result.rounds]
    if any(v is not None for v in user):
        ax.plot(
            rounds,
            [math.nan if v is None else v for v in user],
            marker="o",
            label="user-level epsilon (server ledger)",
        )
    record = [r.get("fit", {}).get("epsilon_record_max") for r in result.rounds]
    if any(v is not None for v in record):
        ax.plot(
            rounds,
            [math.nan if v is None else v for v in record],
            marker="s",
            label="largest device record-level epsilon",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon")
    ax.legend(fontsize=8)
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
    summary = summarize(result, baselines, peak_memory_bytes)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    (run_dir / "summary.md").write_text(table(summary) + "\n", "utf-8")
    plot_metrics(result, baselines, run_dir / "metrics.png")
    plot_epsilon(result, run_dir / "epsilon.png")
    write_shoppers(
        run_dir / SHOPPERS_FILE,
        shoppers(population),
        encoder_version=str(population.info.get("encoder", "")),
    )
    return summary


def simulate_and_report(
    config: Config,
    population_name: str,
    *,
    num_devices: int | None = None,
    run_dir: Path | None = None,
    baselines: bool = True,
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
        result = simulate(config, population_name, population=population, run_dir=run_dir)
    reference = run_baselines(population, config).metrics if baselines else None
    return write_report(result, population, reference, peak_memory_bytes=memory.peak_bytes)
