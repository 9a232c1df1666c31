"""Spoken queries in the search service: audio in, the words heard joined to the query.

The recognizer (``speech.engine``) is restricted to the served catalog's vocabulary, built
from its items when the service starts and changed with every upsert and delete, so a word
that a new item brings can be said and heard from the next request on. The words heard are
appended to the typed text (if any) and the query goes on as a text query, fused with a
photo like typed text: the text tower reads typed and spoken words together, as one phrase.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from common.config import SpeechConfig
from common.speech.engines import create_transcriber
from common.speech.transcript import SpeechError, Transcriber, Transcript
from common.speech.vocabulary import CatalogVocabulary, DescribedItem
from server.search.api import ApiError
from server.search.audio import AudioError, decode_wav

log = logging.getLogger(__name__)


class SpokenQueries:
    """The service's recognizer and the catalog vocabulary it is kept in step with."""

    def __init__(
        self,
        config: SpeechConfig,
        items: Iterable[DescribedItem],
        transcriber: Transcriber | None = None,
    ) -> None:
        self.config = config
        if transcriber is None and config.engine != "off":
            transcriber = create_transcriber(config)
        self.transcriber = transcriber
        self.vocabulary = CatalogVocabulary.from_items(items)
        self._lock = threading.Lock()
        if self.transcriber is not None:
            self.transcriber.use_vocabulary(self.vocabulary)
            log.info(
                "spoken queries: %s, %d catalog words",
                self.transcriber.name,
                len(self.vocabulary.words),
            )

    def items_changed(
        self, upserted: Sequence[DescribedItem] = (), removed: Sequence[DescribedItem] = ()
    ) -> None:
        """Follow a catalog change: items put, and the items replaced or deleted (as the
        catalog's ``upsert`` and ``delete`` return them). Blocking: the new language model
        is built here."""
        with self._lock:
            self.vocabulary.remove(removed)
            self.vocabulary.put(upserted)
            if self.transcriber is not None:
                self.transcriber.use_vocabulary(self.vocabulary)

    def transcribe(self, wav: bytes) -> Transcript:
        """The words in a WAV file (blocking: run it off the event loop)."""
        if self.transcriber is None:
            raise ApiError(422, "audio", "spoken queries are off on this service (speech.engine)")
        try:
            return self.transcriber.transcribe(decode_wav(wav, self.config))
        except AudioError as exc:
            raise ApiError(exc.status, "audio", str(exc)) from None
        except SpeechError as exc:
            log.error("speech recognition failed: %s", exc)
            raise ApiError(422, "audio", f"speech recognition failed: {exc}") from None

    def describe(self) -> dict[str, Any]:
        engine = "off" if self.transcriber is None else self.transcriber.name
        return {
            "engine": engine,
            "catalog_words": len(self.vocabulary.words),
            "max_seconds": self.config.max_seconds,
            "max_bytes": self.config.max_bytes,
        }


def with_transcript(data: dict[str, Any], heard: Transcript, has_image: bool) -> dict[str, Any]:
    """The request's fields with the words heard appended to its text; 422 when nothing
    was heard and there is nothing else to search for."""
    typed = data.get("text")
    typed = typed.strip() if isinstance(typed, str) else typed
    if not heard.text and not typed and not has_image:
        raise ApiError(422, "audio", "no speech recognized in the audio")
    if typed is not None and not isinstance(typed, str):
        return data  # the query's own validation names the bad text
    return {**data, "text": " ".join(part for part in (typed, heard.text) if part)}


def transcript_json(heard: Transcript) -> dict[str, Any]:
    return {"transcript": heard.text, "transcript_confidence": heard.confidence}
