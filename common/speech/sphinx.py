"""The offline default recognizer: pocketsphinx with a language model of the catalog.

The pocketsphinx wheel ships a US English acoustic model, CMUdict and a general English
language model; nothing is downloaded. Decoding against the general model, product queries
come out as unrelated English ("black casual shoes" -> "i too old you"); against a trigram
model of the catalog's phrases (``common.speech.vocabulary``, ``common.speech.ngram``) the
decoder can only say what the catalog could answer. Words missing from CMUdict get a
pronunciation from ``common.speech.lexicon``. A new vocabulary builds a new decoder
(tens of milliseconds for thousands of items) which replaces the old one atomically.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.speech.lexicon import Lexicon
from common.speech.ngram import arpa_model
from common.speech.transcript import SAMPLE_RATE, SpeechError, Transcript
from common.speech.vocabulary import CatalogVocabulary, Phrase

if TYPE_CHECKING:
    from pocketsphinx import Decoder

log = logging.getLogger(__name__)

# The model's noise removal and cepstral mean are estimated over the whole utterance, so
# the share of non-speech in it moves the features: a clip cut tight to the words loses
# its first word, and one with seconds of silence (a microphone left on) as well. Audio is
# cut to the words (frames within _SPEECH_DB of the loudest, _KEEP_S around them) and given
# the same short margin of faint noise (seeded; zeros have no spectrum) on both sides.
_FRAME = SAMPLE_RATE // 100
_SPEECH_DB = 40.0
_KEEP_S = 0.1
_MARGIN_S = 0.2
_MARGIN_NOISE = 3.0
_DECODER_OPTIONS = {"samprate": SAMPLE_RATE, "loglevel": "FATAL", "topn": 8}


@cache
def shipped_lexicon() -> Lexicon:
    """CMUdict as shipped in the pocketsphinx wheel (read once, about 0.3 s)."""
    from pocketsphinx import get_model_path

    return Lexicon.read(Path(get_model_path("en-us/cmudict-en-us.dict")))


class SphinxTranscriber:
    """pocketsphinx; the catalog's language model once ``use_vocabulary`` is called (the
    general English one before, or always with ``general=True``)."""

    name = "pocketsphinx"

    def __init__(self, *, general: bool = False) -> None:
        self.general = general
        self._lock = threading.Lock()
        self._decoder: Any = None  # built when first needed: the general model takes 0.6 s

    def use_vocabulary(self, vocabulary: CatalogVocabulary) -> None:
        if self.general:
            return
        phrases = vocabulary.phrase_counts()
        if not phrases:
            log.warning("the catalog has no words: speech is decoded with general English")
        decoder = _decoder((phrases, vocabulary.words) if phrases else None)
        with self._lock:
            self._decoder = decoder

    def transcribe(self, samples: np.ndarray) -> Transcript:
        pcm = _with_margins(_words_only(samples)).tobytes()
        with self._lock:  # a decoder decodes one utterance at a time
            if self._decoder is None:
                self._decoder = _decoder(None)
            decoder = self._decoder
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
        if hypothesis is None or not hypothesis.hypstr.strip():
            return Transcript("")
        return Transcript(hypothesis.hypstr.strip(), round(float(hypothesis.prob), 4))


def _decoder(catalog: tuple[Mapping[Phrase, int], set[str]] | None) -> Decoder:
    """A decoder with the shipped acoustic model and either the general English model
    (``catalog`` None) or the catalog's (phrase counts, words)."""
    from pocketsphinx import Decoder

    try:
        if catalog is None:
            return Decoder(**_DECODER_OPTIONS)
        phrases, words = catalog
        lexicon = shipped_lexicon()
        with tempfile.TemporaryDirectory(prefix="fedsearch-speech-") as folder:
            lm, dictionary = Path(folder) / "catalog.lm", Path(folder) / "catalog.dict"
            lm.write_text(arpa_model(phrases), encoding="utf-8")
            with dictionary.open("w", encoding="utf-8") as fh:
                for word in sorted(words):
                    for i, phones in enumerate(lexicon.pronounce(word)):
                        fh.write(f"{word}{f'({i + 1})' if i else ''} {phones}\n")
            return Decoder(lm=str(lm), dict=str(dictionary), **_DECODER_OPTIONS)
    except (RuntimeError, ValueError) as exc:
        raise SpeechError(f"pocketsphinx could not load its model: {exc}") from exc


def _words_only(samples: np.ndarray) -> np.ndarray:
    """The samples from the first to the last loud frame, with ``_KEEP_S`` around."""
    frames = len(samples) // _FRAME
    if frames == 0:
        return samples
    power = np.mean(np.square(samples[: frames * _FRAME].reshape(frames, _FRAME)), axis=1)
    level = 10 * np.log10(power + 1e-12)
    loud = np.flatnonzero(level > level.max() - _SPEECH_DB)
    keep = int(_KEEP_S * SAMPLE_RATE)
    return samples[max(0, loud[0] * _FRAME - keep) : (loud[-1] + 1) * _FRAME + keep]


def _with_margins(samples: np.ndarray) -> np.ndarray:
    """16-bit PCM of the samples with ``_MARGIN_S`` of faint noise before and after."""
    margin = np.random.default_rng(0).normal(0.0, _MARGIN_NOISE, int(SAMPLE_RATE * _MARGIN_S))
    scaled = np.asarray(samples, dtype=np.float64) * 32767.0
    pcm = np.concatenate([margin, scaled, margin])
    return np.clip(np.round(pcm), -32768, 32767).astype("<i2")
