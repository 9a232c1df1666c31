"""The transcriber interface: 16 kHz mono speech in, the words heard out.

Samples are float32 in [-1, 1] at ``SAMPLE_RATE``; callers decode and resample first (the
search service from WAV, see ``server.search.audio``). A recognizer may be restricted to a
catalog's vocabulary (``use_vocabulary``), which it is handed again after every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.speech.vocabulary import CatalogVocabulary

SAMPLE_RATE = 16_000


class SpeechError(RuntimeError):
    """A recognizer could not be loaded, or failed on a piece of audio."""


@dataclass(frozen=True)
class Transcript:
    """What was heard: lower-case words (empty when nothing was recognized) and, when the
    recognizer gives one, its posterior probability for those words, in [0, 1]."""

    text: str
    confidence: float | None = None


class Transcriber(Protocol):
    """A speech recognizer. ``transcribe`` may be called from several threads at once."""

    name: str

    def transcribe(self, samples: np.ndarray) -> Transcript: ...

    def use_vocabulary(self, vocabulary: CatalogVocabulary) -> None:
        """Adapt to what the catalog sells (a recognizer with an open vocabulary may ignore
        it). Called at start and after every change of the catalog."""
        ...
