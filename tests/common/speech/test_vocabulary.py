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
    vocab = CatalogVocabulary.from_items(
        [
            Thing("1", "Red Kimono", "Kimonos", {"baseColour": "Red"}),
            Thing("2", "Blue Kimono", "Kimonos", {"baseColour": "Blue"}),
        ]
    )
    assert len(vocab) == 2 and vocab.phrase_counts()[("kimonos",)] == 2
    assert {"red", "blue", "kimono", "kimonos"} <= vocab.words

    vocab.put([Thing("2", "Green Poncho", "Ponchos", {"baseColour": "Green"})])  # replaced
    assert vocab.phrase_counts()[("kimonos",)] == 1
    assert "blue" not in vocab.words and {"green", "poncho"} <= vocab.words

    vocab.remove(["1", "unknown"])
    assert vocab.words == {"green", "poncho", "ponchos"} and len(vocab) == 1
    assert all(count > 0 for count in vocab.phrase_counts().values())


def test_items_are_kept_not_their_phrases_and_taking_them_back_is_exact():
    """A million items must not each hold a set of fresh phrase tuples (2.8 GB)."""
    things = [Thing(str(i), f"Red Kimono {'x' * (i % 2)}", "Kimonos") for i in range(4)]
    vocab = CatalogVocabulary.from_items(things)
    assert all(vocab._items[t.id] is t for t in things)
    vocab.put([Thing("1", "Red Kimono", "Kimonos")])
    vocab.remove(["0", "2"])
    assert vocab.phrase_counts() == {
        ("red", "kimono"): 1,
        ("red", "kimono", "x"): 1,
        ("kimonos",): 2,
    }
