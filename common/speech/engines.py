"""Choosing the recognizer from the ``speech`` config section."""

from __future__ import annotations

from pathlib import Path

from common.config import SpeechConfig
from common.speech.transcript import SpeechError, Transcriber


def create_transcriber(config: SpeechConfig) -> Transcriber:
    """The configured recognizer (``SpeechError`` if it cannot be loaded or is off)."""
    if config.engine == "pocketsphinx":
        from common.speech.sphinx import SphinxTranscriber

        return SphinxTranscriber(general=config.language_model == "general")
    if config.engine == "whisper":
        from common.speech.whisper import WhisperTranscriber

        return WhisperTranscriber(Path(config.whisper_dir), device=config.whisper_device)
    raise SpeechError("spoken queries are off (speech.engine = off)")
