"""The same query for several simulated shoppers, printed side by side (``fedsearch search``).

Runs the service's own pipeline in-process (base encoder, latest verified adapter version,
the served catalog) without HTTP: the README's demo ends with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.config import Config
from common.model.encoder import Encoder
from server.search.catalog import Catalog
from server.search.engine import Query, SearchResult
from server.search.service import SearchService
from server.search.shoppers import shoppers_for

COLUMN = 44


def pick_shoppers(
    config: Config, catalog: Catalog, names: list[str] | None, dim: int
) -> tuple[str, list[dict[str, Any]]]:
    """(source, shoppers): the named ones, else the first two, of the last run's file."""
    source, shoppers = shoppers_for(config.paths.work, config.search.shoppers_file, catalog, dim)
    if not names:
        return source, shoppers[:2]
    by_name = {s["name"]: s for s in shoppers}
    missing = [n for n in names if n not in by_name]
    if missing:
        known = ", ".join(list(by_name)[:8])
        raise KeyError(f"unknown shopper(s) {missing} in {source} (known: {known}, ...)")
    return source, [by_name[n] for n in names]


def side_by_side(text: str, columns: list[tuple[str, SearchResult]]) -> str:
    """A plain-text table: one column of ranked titles and scores per shopper."""
    lines = [f'query "{text}", model version {columns[0][1].model_version}', ""]
    lines.append("".join(f"{name[: COLUMN - 2]:<{COLUMN}}" for name, _ in columns).rstrip())
    lines.append("".join(f"{'-' * (COLUMN - 2):<{COLUMN}}" for _ in columns).rstrip())
    depth = max(len(result.hits) for _, result in columns)
    for rank in range(depth):
        cells = []
        for _, result in columns:
            if rank < len(result.hits):
                hit = result.hits[rank]
                cell = f"{rank + 1:>2}. {hit.item.title[: COLUMN - 14]} {hit.score:.3f}"
            else:
                cell = ""
            cells.append(f"{cell:<{COLUMN}}")
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def compare_shoppers(
    config: Config,
    encoder: Encoder,
    catalog: Catalog,
    text: str,
    *,
    names: list[str] | None = None,
    k: int = 10,
) -> str:
    """Search ``text`` once without personalization and once per shopper; the table."""
    service = SearchService(config, encoder, catalog)
    try:
        service.watcher.check()
        source, shoppers = pick_shoppers(config, catalog, names, encoder.dim)
        beta = config.search.personalization_weight
        columns = [("not personalized", service.engine.search(Query(text=text, k=k)))]
        for shopper in shoppers:
            query = Query(
                text=text,
                k=k,
                user_vector=np.asarray(shopper["vector"], dtype=np.float32),
                personalization_weight=beta,
            )
            columns.append((shopper["name"], service.engine.search(query)))
    finally:
        service.engine.close()
    label = "demo shoppers (no simulation run found)" if source == "demo" else source
    return f"shoppers from {label}\n" + side_by_side(text, columns)
