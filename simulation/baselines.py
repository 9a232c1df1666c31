"""Non-federated baselines on a population's held-out searches.

- ``popularity``: every query gets the same ranking, by train click count.
- ``base``: the frozen base encoder, cos(query, item).
- ``base+popularity``: ``cos(query, item) + w * log(1 + pop) / log(1 + max pop)``, with
  ``w`` picked on TRAIN searches only (``tune_popularity_weight``: each search's clicked item
  counted with its own click left out); never on test.
- ``public warm start``: the adapter fitted on the catalog's phrases alone
  (``server.training.warm_start``), where federated training starts.
- ``centralized``: the same ``QueryAdapter`` trained without privacy on all devices' train
  searches pooled (from the warm start when it is on), with the same per-sample loss as the
  devices (``common.model.ranking_loss``:
  own impression's shown-but-not-clicked items + random catalog items, never in-batch
  negatives). The upper reference for federated training. Early stopping looks only at
  each device's last TRAIN search, held out from training (``validation_split``).
- ``*+personal``: the ranking above with the device's user vector reranking the top
  ``evaluation.candidates`` (``common.model.personalization.rerank``, ``evaluation.beta``),
  gated by the facets the query names when ``evaluation.facet_gate`` is on.
- ``base+facet gate``: that gate alone, without personal weights (catalogs with facets):
  what the personal rerank gains from keeping what the query names on top.
- oracles (populations with ground-truth preferences only, ``simulation.oracle``): match +
  true utility, the same within the base top ``evaluation.candidates``, and exact match
  without personalization: the headroom.

``run_baselines(population, config)`` returns a ``BaselineReport``; ``baseline_table`` prints it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.config import Config
from common.data.searches import SearchExample
from common.evaluation.metrics import ndcg_at_k, ranks_from_scores
from common.evaluation.protocol import (
    evaluate_searches,
    metrics_from_sums,
    rank_sums,
    search_ranks,
    stack_searches,
)
from common.model.adapter import QueryAdapter
from common.model.personalization import user_vector
from common.model.ranking_loss import SearchRows, ranking_loss
from common.progress import progress_bar
from server.training.warm_start import train_warm_start
from simulation.evaluation import evaluate_population
from simulation.oracle import oracle_metrics
from simulation.population import Population

POPULARITY_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
BETAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
_CHUNK = 1024


def popularity_prior(popularity: np.ndarray) -> np.ndarray:
    """log(1 + clicks) scaled to [0, 1] (all zeros if nothing was clicked)."""
    logs = np.log1p(np.asarray(popularity, dtype=np.float64))
    top = logs.max(initial=0.0)
    return (logs / top if top > 0 else logs).astype(np.float32)


def popularity_ranks(popularity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Rank of each relevant item when all items are ordered by popularity (ties against)."""
    ordered = np.sort(np.asarray(popularity))
    at_least = len(ordered) - np.searchsorted(ordered, popularity[relevant], side="left")
    return at_least - 1


def held_out_searches(population: Population) -> list[SearchExample]:
    return [s for d in population.devices for s in d.test]


def pooled_train_searches(population: Population) -> list[SearchExample]:
    return [s for d in population.devices for s in d.train]


def tune_popularity_weight(
    population: Population,
    weights: Sequence[float] = POPULARITY_WEIGHTS,
    *,
    k: int = 10,
    max_searches: int = 20_000,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The ``w`` of base+popularity with the best nDCG@k on (a sample of) TRAIN searches.

    Each search's clicked item is scored with its popularity minus that search's own
    click, so the weight is not rewarded for memorizing the clicks it is tuned on.
    Returns (best weight, {weight: train nDCG@k}).
    """
    searches = pooled_train_searches(population)
    if len(searches) > max_searches:
        picked = np.random.default_rng(seed).choice(len(searches), max_searches, replace=False)
        searches = [searches[i] for i in np.sort(picked)]
    queries, clicked = stack_searches(searches)
    pop = population.popularity.astype(np.float64)
    norm = max(np.log1p(pop.max(initial=0.0)), 1e-12)
    prior = (np.log1p(pop) / norm).astype(np.float32)
    own = (np.log1p(np.maximum(pop[clicked] - 1, 0)) / norm).astype(np.float32)
    item_t = np.ascontiguousarray(population.item_vectors.T)
    totals = dict.fromkeys(weights, 0.0)
    for start in range(0, len(clicked), _CHUNK):
        rows = slice(start, start + _CHUNK)
        base = queries[rows] @ item_t
        idx = np.arange(len(base))
        own_base = base[idx, clicked[rows]]
        for w in weights:
            scores = base + np.float32(w) * prior
            scores[idx, clicked[rows]] = own_base + np.float32(w) * own[rows]
            totals[w] += float(np.sum(ndcg_at_k(ranks_from_scores(scores, clicked[rows]), k)))
    curve = {w: totals[w] / len(clicked) for w in weights}
    return max(curve, key=curve.__getitem__), curve


def train_centralized(
    population: Population, config: Config, *, progress: bool = True
) -> tuple[QueryAdapter, list[dict[str, float]]]:
    """Train a ``QueryAdapter`` on all devices' train searches pooled (no privacy).

    Minibatch AdamW on the mean of ``ranking_loss``; negatives are redrawn each batch.
    With ``centralized.patience`` > 0, stops early on the nDCG of each device's last train
    search (held out from training) and keeps the best epoch. Runs with
    ``centralized.threads`` torch threads. Returns the adapter (eval mode) and one log entry
    per epoch (``loss``, ``seconds``, ``val_ndcg``, ``best``).
    """
    threads = torch.get_num_threads()
    if config.centralized.threads:
        torch.set_num_threads(config.centralized.threads)
    try:
        return _train(population, config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    population: Population, config: Config, progress: bool
) -> tuple[QueryAdapter, list[dict[str, float]]]:
    settings = config.centralized
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    searches, validation = validation_split(population, settings.patience > 0)
    adapter = warm_start(population, config) or QueryAdapter(
        population.item_vectors.shape[1], config.adapter.rank
    )
    adapter.train()
    optimizer = torch.optim.AdamW(
        adapter.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(settings.epochs):
        start = time.perf_counter()
        loss = _epoch(adapter, optimizer, searches, population.item_vectors, config, rng, progress)
        entry = {"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - start}
        history.append(entry)
        if not validation:
            continue
        adapter.eval()
        sums = evaluate_searches(
            validation, population.item_vectors, adapter=adapter, k=config.evaluation.k
        )
        entry["val_ndcg"] = sums["ndcg_sum"] / sums["count"]
        if best is None or entry["val_ndcg"] > best[0]:
            best = (entry["val_ndcg"], copy.deepcopy(adapter.state_dict()))
            entry["best"] = 1.0
        elif epoch + 1 - _best_epoch(history) >= settings.patience:
            break
    if best is not None:
        adapter.load_state_dict(best[1])
    adapter.eval()
    return adapter, history


def warm_start(population: Population, config: Config) -> QueryAdapter | None:
    """The public warm start on the population's catalog (None when off or unavailable)."""
    if not config.federation.warm_start or population.phrases is None:
        return None
    return train_warm_start(
        population.phrases.vectors,
        population.phrases.items,
        population.item_vectors,
        rank=config.adapter.rank,
        steps=config.federation.warm_start_steps,
        seed=config.federation.seed,
    )


def _best_epoch(history: list[dict[str, float]]) -> int:
    return max(int(h["epoch"]) for h in history if h.get("best"))


def validation_split(
    population: Population, hold_out: bool
) -> tuple[list[SearchExample], list[SearchExample]]:
    """(train, validation): with ``hold_out``, each device's last train search (devices with
    at least 2) is validation and the rest is pooled for training; else all is training."""
    if not hold_out:
        return pooled_train_searches(population), []
    train, validation = [], []
    for device in population.devices:
        held = len(device.train) >= 2
        train += device.train[:-1] if held else device.train
        validation += device.train[-1:] if held else []
    return train, validation


def _epoch(
    adapter: QueryAdapter,
    optimizer: torch.optim.Optimizer,
    searches: list[SearchExample],
    item_vectors: np.ndarray,
    config: Config,
    rng: np.random.Generator,
    progress: bool,
) -> float:
    """One pass over ``searches`` in random minibatches; returns the mean loss."""
    batch_size, loss_cfg = config.centralized.batch_size, config.adapter
    order = rng.permutation(len(searches))
    adapter.train()
    total = 0.0
    for b in progress_bar(
        range(0, len(order), batch_size), show=progress, desc="centralized epoch", leave=False
    ):
        queries, positives, negatives = SearchRows(
            [searches[i] for i in order[b : b + batch_size]],
            item_vectors,
            shown_negatives=loss_cfg.shown_negatives,
            random_negatives=loss_cfg.random_negatives,
            rng=rng,
        ).tensors()
        losses = ranking_loss(adapter(queries), positives, negatives, loss_cfg.temperature)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
        total += float(losses.detach().sum())
    return total / len(searches)


def tune_beta(
    population: Population,
    adapter: QueryAdapter | None,
    betas: Sequence[float] = BETAS,
    *,
    candidates: int,
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """The rerank ``beta`` with the best nDCG@k on each device's LAST TRAIN search, with the
    user vector of its other train searches (test searches are not looked at)."""
    devices = [d for d in population.devices if len(d.train) >= 2]
    searches = [d.train[-1] for d in devices]
    users = np.stack(
        [user_vector(population.item_vectors[[s.clicked for s in d.train[:-1]]]) for d in devices]
    )
    queries, clicked = stack_searches(searches)
    if adapter is not None:
        queries = adapter.apply_numpy(queries)
    curve = {}
    for beta in betas:
        ranks = search_ranks(
            queries,
            clicked,
            population.item_vectors,
            users=users,
            beta=beta,
            candidates=candidates,
        )
        curve[beta] = float(np.mean(ndcg_at_k(ranks, k)))
    return max(curve, key=curve.__getitem__), curve


@dataclass
class BaselineReport:
    """Metrics by baseline name, and how they were obtained."""

    metrics: dict[str, dict[str, float]]
    details: dict[str, Any] = field(default_factory=dict)
    adapter: QueryAdapter | None = None


def run_baselines(
    population: Population,
    config: Config,
    *,
    adapter: QueryAdapter | None = None,
    progress: bool = True,
) -> BaselineReport:
    """All baselines on the population's test searches. ``adapter``: a centralized adapter
    trained before (else one is trained now with ``config.centralized``)."""
    evaluation = config.evaluation
    k, beta, candidates = evaluation.k, evaluation.beta, evaluation.candidates
    tests = held_out_searches(population)
    _, relevant = stack_searches(tests)
    metrics = {
        "popularity": metrics_from_sums(
            rank_sums(popularity_ranks(population.popularity, relevant), k), k
        )
    }
    weight, curve = tune_popularity_weight(population, k=k)
    details: dict[str, Any] = {"popularity_weight": weight, "popularity_weight_curve": curve}
    prior = np.float32(weight) * popularity_prior(population.popularity)
    personal: dict[str, Any] = {
        "beta": beta,
        "candidates": candidates,
        "attribute_beta": evaluation.attribute_beta,
        "facet_gate": evaluation.facet_gate,
    }
    base = evaluate_population(population, k=k, **personal)
    metrics["base"] = base.overall["base"]
    metrics["base+popularity"] = metrics_from_sums(
        evaluate_searches(tests, population.item_vectors, k=k, item_prior=prior), k
    )
    metrics["base+personal"] = base.overall["personal"]
    if population.facets is not None and evaluation.facet_gate:
        gated = evaluate_population(
            population, k=k, beta=0.0, candidates=candidates, facet_gate=True
        )
        metrics["base+facet gate"] = gated.overall["personal"]
    public = warm_start(population, config)
    if public is not None:
        warm = evaluate_population(population, adapter=public, k=k, **personal)
        metrics["public warm start"] = warm.overall["adapter"]
        metrics["public warm start+personal"] = warm.overall["personal"]
    if adapter is None:
        start = time.perf_counter()
        adapter, history = train_centralized(population, config, progress=progress)
        details["centralized_training"] = history
        details["centralized_seconds"] = round(time.perf_counter() - start, 1)
    central = evaluate_population(population, adapter=adapter, k=k, **personal)
    metrics["centralized"] = central.overall["adapter"]
    metrics["centralized+personal"] = central.overall["personal"]
    details["beta"] = beta
    oracles = oracle_metrics(population, k=k, candidates=candidates)
    metrics.update(oracles)
    if not oracles:
        details["oracle"] = "no ground-truth preferences: no oracle rows"
    return BaselineReport(metrics, details, adapter)


def baseline_table(metrics: dict[str, dict[str, float]], k: int = 10) -> str:
    """A plain-text table: one row per baseline, HR@k, nDCG@k, MRR and the search count."""
    header = f"{'method':<34}{f'HR@{k}':>9}{f'nDCG@{k}':>10}{'MRR':>9}{'searches':>10}"
    lines = [header, "-" * len(header)]
    for name, m in metrics.items():
        lines.append(
            f"{name:<34}{m[f'HR@{k}']:>9.4f}{m[f'nDCG@{k}']:>10.4f}{m['MRR']:>9.4f}"
            f"{int(m['count']):>10,}"
        )
    return "\n".join(lines)
