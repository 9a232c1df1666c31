"""Benchmark of the federation: wall time and peak memory of whole runs, time per device
update, and bytes each device sends per round with and without SecAgg+.

Peak memory is the largest total resident memory of this process and all its descendants
(the Ray head and workers), sampled every 0.2 s (``simulation.memory``). Bytes are counted by
``simulation.wiretap`` on every reply a device sends (``count_bytes()`` of its records),
summed per device and round over the training messages (all four SecAgg+ stages).
"""

from __future__ import annotations

import json
import os
import time
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
from simulation.report import write_report
from simulation.wiretap import read_tap

TRAFFIC_ROUNDS = 2


def timed_run(config: Config, name: str, out: Path, **kwargs: Any) -> dict[str, Any]:
    """One simulation, with its wall time (population load included) and peak memory."""
    start = time.perf_counter()
    with PeakMemory() as memory:
        population = load_population(
            name, config, num_devices=kwargs.pop("num_devices", None), seed=config.federation.seed
        )
        result = simulate(config, name, population=population, run_dir=out / name, **kwargs)
    write_report(result, population, peak_memory_bytes=memory.peak_bytes)
    return {
        "population": name,
        "devices": len(population.devices),
        "rounds": len(result.rounds),
        "dp": config.federation.dp,
        "secagg": config.federation.secagg,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "federation_seconds": round(result.wall_seconds, 1),
        "peak_memory_mb": round(memory.peak_bytes / 2**20),
        **update_times(result),
        "final": result.final.get("evaluate", {}),
        "epsilon_user": result.final.get("epsilon_user"),
    }


def update_times(result: SimulationResult) -> dict[str, float]:
    """Device-side seconds per local update, and round wall time per participating device."""
    fits = [r["fit"] for r in result.rounds if r.get("fit")]
    local = [f["train_seconds_mean"] for f in fits if f.get("train_seconds_mean")]
    rounds = [r["elapsed_s"] for r in result.rounds]
    per_round = np.diff([0.0, *rounds]) if rounds else np.array([])
    participants = sum(f.get("participants", 0) for f in fits)
    return {
        "local_update_seconds": round(float(np.mean(local)), 4) if local else None,
        "round_seconds_per_participant": round(float(per_round.sum() / participants), 3)
        if participants
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
    """Bytes per device per round with and without SecAgg+ (same population, short runs)."""
    figures = {}
    for secagg in (True, False):
        label = "secagg" if secagg else "plain"
        run_config = with_overrides(config, secagg=secagg, rounds=TRAFFIC_ROUNDS, publish=False)
        tap = out / f"tap-{label}"
        simulate(
            run_config,
            "marketplace",
            population=population,
            run_dir=out / f"traffic-{label}",
            wiretap=tap,
            wiretap_content=False,
        )
        figures[label] = bytes_per_device_round(tap / "wire")
    return figures


def run_bench(
    config: Config,
    *,
    shoppers: int = 100,
    rounds: int = 20,
    retail_rounds: int | None = None,
    retail: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    out = (
        Path(out)
        if out
        else config.paths.work / "bench" / time.strftime("federation-%Y%m%d-%H%M%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    figures["marketplace"] = timed_run(
        with_overrides(config, rounds=rounds), "marketplace", out, num_devices=shoppers
    )
    if retail:
        figures["retail"] = timed_run(with_overrides(config, rounds=retail_rounds), "retail", out)
    population = load_population(
        "marketplace", config, num_devices=shoppers, seed=config.federation.seed
    )
    figures["local_update_seconds"] = local_update_seconds(config, population)
    figures["bytes_per_device_round"] = traffic(config, population, out)
    (out / "bench.json").write_text(json.dumps(figures, indent=2), "utf-8")
    figures["out"] = str(out)
    return figures


def format_bench(figures: dict[str, Any]) -> str:
    lines = [f"federation benchmark ({figures['cpus']} CPUs) -> {figures['out']}"]
    for key in ("marketplace", "retail"):
        run = figures.get(key)
        if not run:
            continue
        lines.append(
            f"{key}: {run['devices']} devices, {run['rounds']} rounds, DP {run['dp']}, "
            f"SecAgg+ {run['secagg']}: wall {run['wall_seconds']} s "
            f"(federation {run['federation_seconds']} s), peak memory {run['peak_memory_mb']} MB, "
            f"local update {run['local_update_seconds']} s, "
            f"round time per participating device {run['round_seconds_per_participant']} s"
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
