"""pocketsphinx on speech synthesized by espeak-ng (the Klatt voice; skips without it)."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from common.config import SpeechConfig
from common.speech.sphinx import SphinxTranscriber
from common.speech.vocabulary import CatalogVocabulary
from server.search.audio import decode_wav


@dataclass(frozen=True)
class Thing:
    id: str
    title: str
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


MEN, WOMEN = {"gender": "Men"}, {"gender": "Women"}
ITEMS = [
    Thing("1", "Puma Men Black Casual Shoes", "Casual Shoes", {"baseColour": "Black", **MEN}),
    Thing("2", "Levis Men Blue Jeans", "Jeans", {"baseColour": "Blue", **MEN}),
    Thing("3", "Baggit Women Red Handbag", "Handbags", {"baseColour": "Red", **WOMEN}),
    Thing("4", "Nike White Sports Shoes", "Sports Shoes", {"baseColour": "White"}),
    Thing("5", "Titan Women Silver Watch", "Watches", {"baseColour": "Silver", **WOMEN}),
]


@pytest.fixture(scope="module")
def catalog_transcriber():
    transcriber = SphinxTranscriber()
    transcriber.use_vocabulary(CatalogVocabulary.from_items(ITEMS))
    return transcriber


def samples(wav: bytes) -> np.ndarray:
    return decode_wav(wav, SpeechConfig())


@pytest.mark.parametrize(
    "said", ["black casual shoes for men", "red handbags for women", "silver watches"]
)
def test_catalog_phrases_are_heard(catalog_transcriber, speak, said):
    heard = catalog_transcriber.transcribe(samples(speak(said)))
    assert heard.text == said
    assert heard.confidence is not None and 0 < heard.confidence <= 1


def test_the_general_model_is_not_restricted_to_the_catalog(speak):
    general = SphinxTranscriber(general=True)
    general.use_vocabulary(CatalogVocabulary.from_items(ITEMS))  # ignored
    heard = general.transcribe(samples(speak("black casual shoes for men")))
    assert heard.text and heard.text != "black casual shoes for men"


def test_a_new_item_brings_its_words(speak):
    transcriber = SphinxTranscriber()
    vocabulary = CatalogVocabulary.from_items(ITEMS)
    transcriber.use_vocabulary(vocabulary)
    audio = samples(speak("red umbrella"))
    assert "umbrella" not in transcriber.transcribe(audio).text.split()
    vocabulary.put([Thing("6", "Red Rain Umbrella", "Umbrellas", {"baseColour": "Red"})])
    transcriber.use_vocabulary(vocabulary)
    assert transcriber.transcribe(audio).text == "red umbrella"


def test_silence_is_heard_as_nothing(catalog_transcriber):
    assert catalog_transcriber.transcribe(np.zeros(16_000, np.float32)).text == ""


def test_an_empty_catalog_falls_back_to_general_english(caplog):
    transcriber = SphinxTranscriber()
    transcriber.use_vocabulary(CatalogVocabulary())
    assert "general English" in caplog.text
    assert transcriber.transcribe(np.zeros(8_000, np.float32)).text == ""
