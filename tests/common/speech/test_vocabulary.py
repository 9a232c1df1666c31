from collections import Counter
from dataclasses import dataclass, field

from common.speech.vocabulary import CatalogVocabulary, item_phrases, spoken_words


@dataclass(frozen=True)
class Thing:
    id: str
    title: str
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def test_spoken_words_are_lower_case_letters_as_said():
    assert spoken_words("Nike Men's T-Shirts 2011") == ["nike", "men's", "tshirts"]
    assert spoken_words("Crème brûlée, x-ray") == ["creme", "brulee", "xray"]
    assert spoken_words("   ") == []


def test_item_phrases_hold_the_title_and_what_shoppers_ask():
    phrases = item_phrases(
        "Puma Men Black Shoes",
        "Casual Shoes",
        {"baseColour": "Black", "usage": "Casual", "gender": "Men", "year": "2012"},
    )
    words = {" ".join(p) for p in phrases}
    assert {
        "puma men black shoes",
        "casual shoes",
        "black casual shoes",
        "black casual casual shoes",
        "men black casual shoes",
        "black casual shoes for men",
        "casual shoes for men",
    } <= words
    assert not any(w.isdigit() for p in phrases for w in p)


def test_vocabulary_follows_puts_replacements_and_removals():
    red = Thing("1", "Red Kimono", "Kimonos", {"baseColour": "Red"})
    blue = Thing("2", "Blue Kimono", "Kimonos", {"baseColour": "Blue"})
    vocab = CatalogVocabulary.from_items([red, blue])
    assert len(vocab) == 2 and vocab.phrase_counts()[("kimonos",)] == 2
    assert {"red", "blue", "kimono", "kimonos"} <= vocab.words

    vocab.remove([blue])  # replaced: the catalog returns the old record
    vocab.put([Thing("2", "Green Poncho", "Ponchos", {"baseColour": "Green"})])
    assert vocab.phrase_counts()[("kimonos",)] == 1
    assert "blue" not in vocab.words and {"green", "poncho"} <= vocab.words

    vocab.remove([red])
    assert vocab.words == {"green", "poncho", "ponchos"} and len(vocab) == 1
    assert all(count > 0 for count in vocab.phrase_counts().values())


def test_no_item_is_kept_and_changes_in_either_order_end_alike():
    """A million items must not each be held (records or phrases): only counts are."""
    things = [Thing(str(i), f"Red Kimono {'x' * (i % 2)}", "Kimonos") for i in range(4)]
    vocab = CatalogVocabulary.from_items(things)
    assert not any(isinstance(v, (dict, list)) and v for v in vars(vocab).values()
                   if not isinstance(v, Counter))  # fmt: skip
    newer = Thing("1", "Blue Kimono", "Kimonos")
    vocab.remove([newer])  # a second replacement's change arrives before the first's
    assert "blue" not in vocab.words and ("kimonos",) in vocab.phrase_counts()
    vocab.remove([things[1]])
    vocab.put([newer])
    vocab.remove([things[0], things[2]])
    assert vocab.phrase_counts() == {("red", "kimono", "x"): 1, ("kimonos",): 1}
    assert len(vocab) == 1
