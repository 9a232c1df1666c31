"""Simulated shoppers shown on the web page: names and user vectors from a simulation run.

File format (``<work_dir>/<run>/shoppers.json``, written by ``write_shoppers``)::

    {"format": "fedsearch-shoppers/1", "dim": 384, "encoder_version": "...",
     "shoppers": [{"name": "shopper-017", "description": "likes black casual shoes",
                   "vector": [0.01, ...], "weight": 0.3}, ...]}

``weight`` (optional) is the personalization weight the page asks for with that shopper
(absent: the service's ``search.personalization_weight``).

These are simulated people, so their vectors may be sent to the browser, which passes one
back as ``user_vector`` exactly as a device would. Without a simulation run, demo shoppers
are derived from catalog attributes (``demo_shoppers``) and labelled as such.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write
from common.model.personalization import user_vector
from server.search.catalog import Catalog

log = logging.getLogger(__name__)

FORMAT = "fedsearch-shoppers/1"
FILE_NAME = "shoppers.json"
# A built-in demo shopper stands for one sharp taste, not a history's mixed one: the page
# lets it weigh as much as the query, so its whole taste shows at a glance.
DEMO_WEIGHT = 1.0


def write_shoppers(
    path: Path, shoppers: Sequence[dict[str, Any]], *, encoder_version: str = ""
) -> None:
    """Write ``[{"name", "description", "vector"}]`` in the shoppers format."""
    records = [
        {
            "name": str(s["name"]),
            "description": str(s.get("description", "")),
            "vector": [float(x) for x in np.asarray(s["vector"], dtype=np.float32)],
        }
        for s in shoppers
    ]
    dims = {len(r["vector"]) for r in records}
    if len(dims) > 1:
        raise ValueError(f"shopper vectors have different lengths: {sorted(dims)}")
    data = {
        "format": FORMAT,
        "dim": dims.pop() if dims else 0,
        "encoder_version": encoder_version,
        "shoppers": records,
    }
    atomic_write(path, json.dumps(data))


def find_shoppers_file(work_dir: Path) -> Path | None:
    """The newest ``shoppers.json`` one or two folders below ``work_dir``."""
    found = list(work_dir.glob(f"*/{FILE_NAME}")) + list(work_dir.glob(f"*/*/{FILE_NAME}"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_shoppers(path: Path, dim: int) -> list[dict[str, Any]]:
    """Read a shoppers file; ``ValueError`` naming the problem if it does not fit ``dim``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    shoppers = data.get("shoppers", [])
    for i, s in enumerate(shoppers):
        vector = np.asarray(s.get("vector", []), dtype=np.float32)
        if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
            raise ValueError(f"{path}: shoppers[{i}].vector must be {dim} finite numbers")
    keys = ("name", "description", "vector", "weight")
    return [{k: s[k] for k in keys if k in s} for s in shoppers]


def shoppers_for(
    work_dir: Path, shoppers_file: str, catalog: Catalog, dim: int
) -> tuple[str, list[dict[str, Any]]]:
    """(source, shoppers): the built-in demo shoppers from the catalog, then those of
    ``shoppers_file`` if set, else of the newest run's file under ``work_dir``."""
    built_in = demo_shoppers(catalog)
    path = Path(shoppers_file) if shoppers_file else find_shoppers_file(work_dir)
    if path is not None and path.is_file():
        try:
            return f"demo + {path}", built_in + load_shoppers(path, dim)
        except (ValueError, KeyError) as exc:
            log.warning("ignoring shoppers file: %s", exc)
    return "demo", built_in


def demo_shoppers(catalog: Catalog, n: int = 4) -> list[dict[str, Any]]:
    """Shoppers who like one (gender, colour) group of the catalog: how the mean of those
    items' vectors differs from the catalog's mean, normalized (what sets the group apart,
    not what all items share, so the rerank favours the group within any query)."""
    items = catalog.items()
    everything = catalog.vectors_of([it.id for it in items]).mean(axis=0)
    groups = Counter(
        (it.attributes.get("gender", ""), it.attributes.get("baseColour", "")) for it in items
    )
    chosen = [g for g, count in groups.most_common() if all(g) and count >= 3][:n]
    shoppers = []
    for gender, colour in chosen:
        ids = [
            it.id
            for it in items
            if (it.attributes.get("gender"), it.attributes.get("baseColour")) == (gender, colour)
        ]
        shoppers.append(
            {
                "name": f"demo: {gender} / {colour}",
                "description": f"likes {colour.lower()} items for {gender.lower()} (demo)",
                "vector": user_vector(catalog.vectors_of(ids) - everything).tolist(),
                "weight": DEMO_WEIGHT,
            }
        )
    return shoppers
