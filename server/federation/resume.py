"""Resuming a run whose server was killed: the server's state after each recorded round.

After each round is charged, published and recorded, the server writes what the next
round starts from to ``<run_dir>/server_state.npz`` (atomically): the round, the global
adapter, the server optimizer's momentum, the moving average, the adaptive clipping
norm, how far its random stream has been read, and the promotion rule's state (the
candidate awaiting evaluation, the served version's evaluation). A server restarted on
the same run folder with ``resume``
(``fedsearch simulate --resume RUN_DIR``, ``fedsearch deploy run --resume RUN_DIR``)
continues from that round: ``metrics.jsonl`` is cut back to it, the registry keeps its
versions and the population's ledger keeps every round it charged. A round that was
charged (its sum may have been unmasked) but not recorded before the kill stays charged
and is run again, so it costs its epsilon twice; ``resume_point`` names such rounds. A
seeded simulation resumed after a kill that happened before any device trained in the
interrupted round repeats the uninterrupted run exactly. A DP-FTRL run cannot be resumed
(``check_resumable``): the tree's pending noise and the epoch's cohorts are not saved.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError
from common.files import atomic_write
from server.federation.ledger import PopulationLedger
from server.federation.promotion import Candidate, Standing
from server.federation.recorder import METRICS_FILE

log = logging.getLogger(__name__)
SERVER_STATE_FILE = "server_state.npz"
LISTS = ("weights", "velocity", "average", "evaluating")


@dataclass(frozen=True)
class ServerState:
    """What round ``round`` + 1 starts from (see the module doc)."""

    round: int
    weights: list[np.ndarray]
    velocity: list[np.ndarray] | None
    average: list[np.ndarray] | None
    rng_position: int
    evaluating: list[np.ndarray] | None = None
    pending: Candidate | None = None
    standing: Standing = Standing()
    clipping_norm: float | None = None


def check_resumable(tree: bool) -> None:
    """Refuse to resume a DP-FTRL run (see the module doc)."""
    if tree:
        raise ConfigError(
            '--resume: a run with federation.mechanism = "dp-ftrl" cannot be resumed (the '
            "tree's pending noise and the epoch's cohorts are not saved); start a new run"
        )


def save_server_state(run_dir: Path, state: ServerState) -> None:
    arrays: dict[str, Any] = {}
    for name in LISTS:
        for n, array in enumerate(getattr(state, name) or []):
            arrays[f"{name}.{n}"] = np.asarray(array)
    pending = state.pending
    meta: dict[str, Any] = {"round": state.round, "rng_position": state.rng_position}
    meta["clipping_norm"] = state.clipping_norm
    meta |= {name: getattr(state, name) is not None for name in LISTS[1:]}
    meta["standing"] = asdict(state.standing)
    meta["pending"] = (
        None if pending is None else {"round": pending.round, "figures": pending.figures}
    )
    buffer = io.BytesIO()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays)
    atomic_write(Path(run_dir) / SERVER_STATE_FILE, buffer.getvalue())


def load_server_state(run_dir: Path) -> ServerState | None:
    path = Path(run_dir) / SERVER_STATE_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        lists = {name: _arrays(data, name) for name in LISTS}
    optional = {name: lists[name] if meta.get(name) else None for name in LISTS[1:]}
    pending = meta.get("pending")
    return ServerState(
        round=int(meta["round"]),
        weights=lists["weights"],
        rng_position=int(meta["rng_position"]),
        pending=None
        if pending is None or optional["evaluating"] is None
        else Candidate(int(pending["round"]), optional["evaluating"], pending["figures"]),
        standing=Standing(**meta.get("standing", {})),
        clipping_norm=meta.get("clipping_norm"),
        **optional,
    )


def _arrays(data: Any, name: str) -> list[np.ndarray]:
    count = sum(1 for key in data.files if key.startswith(f"{name}."))
    return [data[f"{name}.{n}"] for n in range(count)]


def resume_point(run_dir: Path, run: str, ledger: PopulationLedger | None) -> ServerState | None:
    """The state to resume from (None: no round was recorded, start afresh); cut
    ``metrics.jsonl`` back to it and log the rounds the ledger charged after it."""
    metrics = Path(run_dir) / METRICS_FILE
    if not metrics.is_file():
        raise ConfigError(f"resume: {run_dir} holds no {METRICS_FILE}: not a run folder")
    state = load_server_state(run_dir)
    done = state.round if state is not None else 0
    kept = [
        line
        for line in metrics.read_text(encoding="utf-8").splitlines()
        if line.strip() and _complete_round(line, done)
    ]
    atomic_write(metrics, "".join(f"{line}\n" for line in kept))
    if ledger is not None:
        charged = {int(e["round"]) for e in ledger.entries if e["run"] == run}
        again = sorted(r for r in charged if r > done)
        if again:
            log.warning(
                "resume: rounds %s were charged but not recorded before the restart; they "
                "stay charged and run again (their epsilon counts twice)",
                again,
            )
    log.info("resuming %s after round %d", run_dir, done)
    return state


def _complete_round(line: str, done: int) -> bool:
    try:
        return int(json.loads(line)["round"]) <= done
    except (ValueError, KeyError, TypeError):
        return False  # a line cut short by the kill
