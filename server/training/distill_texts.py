"""Public text for distilling the query encoder: catalog titles and attribute phrases.

Only catalog text is used (product titles, descriptions and attributes), never anything a
shopper typed. Phrases follow the shapes of shopper queries in both populations: an article
type alone or with a colour, gender or usage ("black watches", "women casual shoes",
"shirts for men"), short runs of title words, and a retail description's product-type word
(its last word, "mug", "holder") alone and with the word before it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from common.data.records import Product
from common.data.retail import product_type_word

_GENDER_WORDS = ("men", "women", "boys", "girls", "unisex")


def fashion_phrases(products: Iterable[Product]) -> set[str]:
    """Attribute phrases and title fragments of fashion products, lower case."""
    out: set[str] = set()
    for p in products:
        a = {k: v.lower() for k, v in p.attributes.items() if v}
        kind = p.category.lower()
        colour, gender, usage = a.get("baseColour", ""), a.get("gender", ""), a.get("usage", "")
        season, sub = a.get("season", ""), a.get("subCategory", "")
        shapes = [
            (kind,),
            (colour, kind),
            (gender, kind),
            (usage, kind),
            (season, kind),
            (sub,),
            (colour, sub),
            (gender, colour, kind),
            (gender, usage, kind),
            (usage, colour, kind),
            (colour, kind, "for", gender),
            (kind, "for", gender),
        ]
        for gender_word in _GENDER_WORDS:
            shapes.append((gender_word, kind))
        out.update(" ".join(parts) for parts in shapes if all(parts))
        out.update(_title_fragments(p.title))
    return out


def retail_phrases(products: Iterable[Product]) -> set[str]:
    """Product-type words, the word pair before them, and description fragments."""
    out: set[str] = set()
    for p in products:
        words = p.title.lower().split()
        kind = product_type_word(p.title).lower()
        if kind:
            out.add(kind)
        if len(words) >= 2:
            out.add(" ".join(words[-2:]))
        out.update(_title_fragments(p.title))
    return out


def _title_fragments(title: str) -> set[str]:
    words = title.lower().split()
    found = {" ".join(words)} if words else set()
    for size in (2, 3, 4):
        for start in range(0, max(0, len(words) - size + 1)):
            found.add(" ".join(words[start : start + size]))
    return found


def split_phrases(
    phrases: Sequence[str], heldout: int, max_train: int, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded shuffle; the first ``heldout`` phrases are for evaluation only, then up to
    ``max_train`` for training. Disjoint by construction."""
    pool = sorted(set(phrases))
    random.Random(seed).shuffle(pool)
    if len(pool) <= heldout:
        raise ValueError(f"only {len(pool)} distinct phrases for {heldout} held-out queries")
    return pool[heldout : heldout + max_train], pool[:heldout]
