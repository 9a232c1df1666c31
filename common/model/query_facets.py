"""Query facets: the public catalog values a query names, and the items that have them.

A shop's catalog describes items by a category and categorical attributes (colour, gender,
usage, ...). A query that names such values ("black casual shoes", "men tshirts") asks for
items that have them. ``QueryFacets`` finds them in the query text and returns which items
match; the personal rerank (``common.model.personalization.rerank``) then reorders only
within the matching items and keeps them above the rest, so a shopper's taste breaks ties
among what was asked for and never lifts well-liked items of another kind.

Parsing: lower-cased word tokens; each facet value is a phrase of tokens, and a token
also matches its plural (``shoe`` / ``shoes``). Phrases are taken longest first, each query
token used once. A phrase found in several facets (``watches``: a category and a
sub-category) matches an item that has it in any of them; values of one facet are
alternatives (``black white shirts``: black or white), different facets must all hold. A
query that names nothing, or whose facets no item has together, gets no gate (None).

Only public catalog data is used: no history, no user data.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.data.records import MAX_CATEGORICAL_VALUES

CATEGORY = "category"
_WORD = re.compile(r"[^\W_]+")


class Described(Protocol):
    """A catalog record with a category and attributes (``Product``, a served ``Item``)."""

    @property
    def category(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...


@functools.lru_cache(maxsize=1 << 16)  # catalog values repeat across every query's candidates
def phrase_tokens(text: str) -> tuple[str, ...]:
    """Lower-cased word tokens, each reduced to its singular form by dropping one final s."""
    return tuple(_singular(t) for t in _WORD.findall(text.lower()))


def _singular(token: str) -> str:
    plural = len(token) > 3 and token.endswith("s") and not token.endswith("ss")
    return token[:-1] if plural else token


@dataclass(frozen=True)
class QueryFacets:
    """Each facet's value code per item, and the facet values each phrase names."""

    codes: dict[str, np.ndarray]  # facet -> (n_items,) int32 value code
    phrases: dict[tuple[str, ...], tuple[tuple[str, int], ...]]  # phrase -> (facet, code)s
    # query text -> its (read-only) matches: evaluations ask the same texts again and again
    _matched: dict[str, np.ndarray | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_records(cls, records: Sequence[Described]) -> QueryFacets | None:
        """Facets of catalog records (``Product``, a served ``Item``): see ``build``."""
        return cls.build([r.category for r in records], [r.attributes for r in records])

    @classmethod
    def build(
        cls, categories: Sequence[str], attributes: Sequence[Mapping[str, str]]
    ) -> QueryFacets | None:
        """Facets of items with these categories and attributes: the categories (however
        many) and the attributes with at most ``MAX_CATEGORICAL_VALUES`` distinct values
        (None when there are neither)."""
        if len(categories) != len(attributes):
            raise ValueError(f"{len(categories)} categories for {len(attributes)} attribute sets")
        columns = {CATEGORY: list(categories)}
        for name in sorted({name for a in attributes for name in a}):
            columns[name] = [a.get(name, "") for a in attributes]
        codes: dict[str, np.ndarray] = {}
        phrases: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
        for facet, column in columns.items():
            values = sorted(set(column) - {""})
            if not values or (facet != CATEGORY and len(values) > MAX_CATEGORICAL_VALUES):
                continue
            lookup = {value: code for code, value in enumerate(values)}
            codes[facet] = np.array([lookup.get(v, -1) for v in column], dtype=np.int32)
            for value, code in lookup.items():
                if tokens := phrase_tokens(value):
                    phrases[tokens].append((facet, code))
        if not codes:
            return None
        return cls(codes, {p: tuple(f) for p, f in phrases.items()})

    @property
    def n_items(self) -> int:
        return len(next(iter(self.codes.values())))

    @functools.cached_property
    def _longest(self) -> int:
        return max((len(p) for p in self.phrases), default=0)

    def named(self, query: str) -> list[tuple[tuple[str, int], ...]]:
        """The facet values ``query`` names: one tuple of (facet, code) per phrase found."""
        tokens = list(phrase_tokens(query))
        longest = self._longest
        used = [False] * len(tokens)
        found = []
        for size in range(min(longest, len(tokens)), 0, -1):
            for start in range(len(tokens) - size + 1):
                span = range(start, start + size)
                hits = self.phrases.get(tuple(tokens[start : start + size]))
                if hits and not any(used[i] for i in span):
                    found.append(hits)
                    for i in span:
                        used[i] = True
        return found

    def match(self, query: str) -> np.ndarray | None:
        """(n_items,) bool, read-only: the items that have every facet ``query`` names
        (None: no gate)."""
        if query not in self._matched:
            self._matched[query] = self._match(query)
        return self._matched[query]

    def _match(self, query: str) -> np.ndarray | None:
        named = self.named(query)
        if not named:
            return None
        by_facet: dict[frozenset[str], np.ndarray] = {}
        for hits in named:
            facets = frozenset(f for f, _ in hits)
            mask = np.zeros(self.n_items, dtype=bool)
            for facet, code in hits:
                mask |= self.codes[facet] == code
            by_facet[facets] = by_facet[facets] | mask if facets in by_facet else mask
        matches = np.logical_and.reduce(list(by_facet.values()))
        matches.flags.writeable = False
        return matches if matches.any() else None

    def match_rows(self, queries: Sequence[str]) -> np.ndarray | None:
        """(n_queries, n_items) bool; rows of queries without a gate are all True (None
        when no query has one)."""
        rows = [self.match(q) for q in queries]
        if all(r is None for r in rows):
            return None
        full = np.ones(self.n_items, dtype=bool)
        return np.stack([full if r is None else r for r in rows])


def candidate_matches(
    query: str | None, categories: Sequence[str], attributes: Sequence[Mapping[str, str]]
) -> np.ndarray | None:
    """Which of the candidates have the facets ``query`` names, with facets built from the
    candidates themselves (how the search service and devices gate a rerank); None: no
    gate."""
    if not query or not categories:
        return None
    facets = QueryFacets.build(categories, attributes)
    return None if facets is None else facets.match(query)
