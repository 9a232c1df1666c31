"""Benchmark of the federation: round wall time per participating device, memory, the
time of one device's local update, and bytes each device sends per round.

Each cohort size runs a few rounds of the marketplace population with the default privacy
(SecAgg+, user-level DP with the devices' noise): the first round carries the start-up
(Ray actors, the population loaded into each of them), so the figure of record is the
median over the later rounds of (round wall time / devices in the round). Peak memory is
the largest total resident memory of this process and its descendants (``simulation.memory``).
Bytes are counted by ``simulation.wiretap`` on every reply a device sends, summed per
device and round over the training messages (all four SecAgg+ stages).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.local_training import train_local
from common.config import Config, config_from_dict
from common.model.adapter import QueryAdapter
from simulation.engine import SimulationResult, simulate, with_overrides
from simulation.loader import load_population
from simulation.memory import PeakMemory
from simulation.population import Population
from simulation.wiretap import read_tap

TRAFFIC_ROUNDS = 2


def timed_run(
    config: Config, population: Population, out: Path, label: str, **kwargs: Any
) -> dict[str, Any]:
    """One simulation of ``population``: wall time, peak memory, per-device round time."""
    start = time.perf_counter()
    with PeakMemory() as memory:
        result = simulate(
            config, population.name, population=population, run_dir=out / label, **kwargs
        )
    return {
        "population": population.name,
        "devices": len(population.devices),
        "per_round": config.federation.clients_per_round,
        "rounds": len(result.rounds),
        "dp": config.federation.dp,
        "secagg": config.federation.secagg,
        "noise": config.federation.noise,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "federation_seconds": round(result.wall_seconds, 1),
        "peak_memory_mb": round(memory.peak_bytes / 2**20),
        **round_times(result),
    }


def round_times(result: SimulationResult) -> dict[str, Any]:
    """Wall seconds of each round, and per participating device: the first round and the
    median of the later ones (the steady state)."""
    elapsed = [r["elapsed_s"] for r in result.rounds]
    seconds = np.diff([0.0, *elapsed])
    devices = [r.get("fit", {}).get("devices", 0.0) for r in result.rounds]
    per_device = [s / d for s, d in zip(seconds, devices, strict=True) if d]
    return {
        "round_seconds": [round(float(s), 2) for s in seconds],
        "first_round_seconds_per_device": round(per_device[0], 4) if per_device else None,
        "seconds_per_device": round(float(np.median(per_device[1:])), 4)
        if len(per_device) > 1
        else None,
    }


def local_update_seconds(config: Config, population: Population, devices: int = 20) -> dict:
    """Mean seconds of one device's local round, with and without record-level DP (Opacus),
    timed directly on the first ``devices`` devices (no Flower)."""
    torch.set_num_threads(1)
    dim = population.item_vectors.shape[1]
    out = {}
    for record_dp in (True, False):
        settings = config_from_dict({"device": {"dp": record_dp}}, config)
        times = []
        with warnings.catch_warnings():  # seeded noise, as in every simulated device
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            for index, device in enumerate(population.devices[:devices]):
                adapter = QueryAdapter(dim, settings.adapter.rank)
                start = time.perf_counter()
                train_local(
                    adapter,
                    device.train,
                    population.item_vectors,
                    settings.device,
                    settings.adapter,
                    {},
                    seed=index,
                )
                times.append(time.perf_counter() - start)
        out["record_dp" if record_dp else "no_record_dp"] = round(float(np.mean(times)), 4)
    return out


def bytes_per_device_round(folder: Path) -> dict[str, float]:
    """Mean and max bytes one device sends in the training messages of one round."""
    sent: dict[tuple[int, str], int] = defaultdict(int)
    for entry in read_tap(folder):
        if entry["type"] == "train":
            sent[(entry["node"], entry["round"])] += entry["bytes"]
    values = list(sent.values())
    if not values:
        return {"mean": 0.0, "max": 0.0, "samples": 0}
    return {"mean": float(np.mean(values)), "max": float(max(values)), "samples": len(values)}


def traffic(config: Config, population: Population, out: Path) -> dict[str, dict[str, float]]:
    """Bytes per device per round with SecAgg+ (devices' noise) and without (server noise)."""
    figures = {}
    for secagg in (True, False):
        label = "secagg" if secagg else "plain"
        tap = out / f"tap-{label}"
        simulate(
            traffic_config(config, secagg=secagg),
            population.name,
            population=population,
            run_dir=out / f"traffic-{label}",
            wiretap=tap,
            wiretap_content=False,
            reset_ledger=True,
        )
        figures[label] = bytes_per_device_round(tap / "wire")
    return figures


def traffic_config(config: Config, *, secagg: bool) -> Config:
    """A traffic run's config: SecAgg+ with the devices' noise, or plain with the server's
    (the simulated devices' policy then allows a round without SecAgg+: it is measured, not
    deployed)."""
    noise = "devices" if secagg else "server"
    run_config = with_overrides(
        config, secagg=secagg, noise=noise, rounds=TRAFFIC_ROUNDS, publish=False
    )
    if secagg:
        return run_config
    lenient = {"require_secagg": False, "require_noise": False}
    return config_from_dict({"device": lenient}, run_config)


def run_bench(
    config: Config,
    *,
    shoppers: int = 10_000,
    per_round: tuple[int, ...] = (200, 1000),
    rounds: int = 3,
    retail: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """The benchmark's figures (see the module doc); also written to ``bench.json``."""
    out = (
        Path(out)
        if out
        else config.paths.work / "bench" / time.strftime("federation-%Y%m%d-%H%M%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    config = bench_config(config, out, rounds)
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    start = time.perf_counter()
    population = load_population(
        "marketplace", config, num_devices=shoppers, seed=config.federation.seed
    )
    figures["population_seconds"] = round(time.perf_counter() - start, 1)
    figures["runs"] = [
        timed_run(
            with_overrides(config, clients_per_round=m),
            population,
            out,
            f"market-{m}",
            reset_ledger=True,
        )
        for m in per_round
    ]
    if retail:
        customers = load_population("retail", config, seed=config.federation.seed)
        figures["runs"].append(
            timed_run(
                with_overrides(config, clients_per_round=per_round[0]),
                customers,
                out,
                "retail",
                reset_ledger=True,
            )
        )
    figures["local_update_seconds"] = local_update_seconds(config, population)
    figures["bytes_per_device_round"] = traffic(
        with_overrides(config, clients_per_round=min(per_round)), population, out
    )
    (out / "bench.json").write_text(json.dumps(figures, indent=2), "utf-8")
    figures["out"] = str(out)
    return figures


def bench_config(config: Config, out: Path, rounds: int) -> Config:
    """The benchmark measures speed: its runs' ledgers live in ``out`` and no budget stops
    them (the privacy settings themselves stay the configured ones). Its rounds have no
    dropouts, so SecAgg+ keeps neighbourhoods of ``secagg_neighbours`` + 1 devices
    (``simulation.engine.simulate``)."""
    federation = {"rounds": rounds, "epsilon_user": 1e9, "ledger_dir": str(out)}
    return config_from_dict(
        {
            "federation": federation,
            "device": {"max_epsilon_user": 1e9, "max_epsilon_server": 1e9},
        },
        config,
    )


def format_bench(figures: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in figures["load_average"])
    lines = [
        f"federation benchmark ({figures['cpus']} CPUs, load average {load} at start) "
        f"-> {figures['out']}",
        f"marketplace population built in {figures['population_seconds']} s",
    ]
    for run in figures["runs"]:
        lines.append(
            f"{run['population']}, {run['devices']:,} devices, ~{run['per_round']} a round, "
            f"{run['rounds']} rounds (SecAgg+ {run['secagg']}, DP {run['dp']}, noise by "
            f"{run['noise']}): {run['seconds_per_device']} s of round wall time per device "
            f"(median after round 1; round 1: {run['first_round_seconds_per_device']}), "
            f"rounds {run['round_seconds']} s, peak memory {run['peak_memory_mb']} MB"
        )
    local = figures["local_update_seconds"]
    lines.append(
        f"one device's local round, timed alone: {local['record_dp']} s with record-level DP "
        f"(Opacus), {local['no_record_dp']} s without"
    )
    for label, value in figures["bytes_per_device_round"].items():
        lines.append(
            f"bytes sent per device per round ({label}): mean {value['mean']:,.0f}, "
            f"max {value['max']:,.0f} ({value['samples']} device-rounds)"
        )
    return "\n".join(lines)
