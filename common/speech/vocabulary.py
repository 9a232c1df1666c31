"""What shoppers may say about a catalog: phrases built from each item's words.

For every item the phrases are its title and what a shopper would ask for it: its category
alone and with its colour, usage, season and gender ("black casual shoes", "casual shoes
for men", "men black casual shoes"). Phrases are counted over the items, so the words and
word orders common in the catalog weigh most in the language model made from them
(``common.speech.ngram``). Items are added, replaced and removed one by one, as the
catalog's upserts and deletes happen.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

Phrase = tuple[str, ...]

# attributes (of the fashion catalog's format) that describe an item the way shoppers do
MODIFIER_ATTRIBUTES = ("baseColour", "usage", "season")
AUDIENCE_ATTRIBUTE = "gender"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_LETTER_HYPHEN = re.compile(r"\b([a-z])-(?=[a-z])")


class DescribedItem(Protocol):
    """Anything with an id, a title, a category and string attributes (a catalog item)."""

    @property
    def id(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def category(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...


def spoken_words(text: str) -> list[str]:
    """Lower-case words of ``text`` as they would be said and transcribed: accents dropped,
    a single letter joined to its hyphenated word ("T-Shirts" -> "tshirts", the spelling
    of the "Tshirts" category), digits and punctuation left out."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _WORD.findall(_LETTER_HYPHEN.sub(r"\1", ascii_text.lower()))


def item_phrases(title: str, category: str, attributes: Mapping[str, str]) -> set[Phrase]:
    """The title and the category phrases of one item (see the module doc)."""
    kind = tuple(spoken_words(category))
    phrases = {tuple(spoken_words(title))}
    if kind:
        modifiers = [tuple(spoken_words(attributes.get(a, ""))) for a in MODIFIER_ATTRIBUTES]
        modifiers = [m for m in modifiers if m]
        audience = tuple(spoken_words(attributes.get(AUDIENCE_ATTRIBUTE, "")))
        described = [kind, *(m + kind for m in modifiers)]
        if len(modifiers) > 1:
            described.append(modifiers[0] + modifiers[1] + kind)
        phrases.update(described)
        if audience:
            phrases.update(audience + d for d in described)
            phrases.update(d + ("for", *audience) for d in described)
    phrases.discard(())
    return phrases


class CatalogVocabulary:
    """Phrase counts over a catalog's items, kept in step with its changes.

    It keeps only the counts: a change names the items that come and the items that go
    (their records, as the catalog returns them), whose phrases are computed again. Keeping
    each item (or its phrases) would hold a million records in memory.
    """

    def __init__(self) -> None:
        self._counts: Counter[Phrase] = Counter()
        self._items = 0

    @classmethod
    def from_items(cls, items: Iterable[DescribedItem]) -> CatalogVocabulary:
        vocabulary = cls()
        vocabulary.put(items)
        return vocabulary

    def put(self, items: Iterable[DescribedItem]) -> None:
        """Count new items (a replaced item's old record goes through ``remove``)."""
        for item in items:
            self._items += 1
            self._counts.update(_phrases_of(item))

    def remove(self, items: Iterable[DescribedItem]) -> None:
        """Uncount items that were put. Concurrent changes may arrive in either order, so
        a count can fall below zero for a while; only positive ones are phrases."""
        for item in items:
            self._items -= 1
            for phrase in _phrases_of(item):
                self._counts[phrase] -= 1
                if not self._counts[phrase]:
                    del self._counts[phrase]

    def phrase_counts(self) -> Counter[Phrase]:
        """Each distinct phrase and the number of items it came from (a copy)."""
        return Counter({phrase: n for phrase, n in self._counts.items() if n > 0})

    @property
    def words(self) -> set[str]:
        return {word for phrase, n in self._counts.items() if n > 0 for word in phrase}

    def __len__(self) -> int:
        return self._items


def _phrases_of(item: DescribedItem) -> set[Phrase]:
    return item_phrases(item.title, item.category, item.attributes)
