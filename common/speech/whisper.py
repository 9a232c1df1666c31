"""A Whisper-family recognizer from a local folder, through transformers.

The folder is what ``save_pretrained`` writes for a ``WhisperForConditionalGeneration``
and its ``WhisperProcessor`` (config, weights, tokenizer, feature extractor); it is read
with ``local_files_only`` and nothing is downloaded. Whisper's vocabulary is open, so the
catalog's needs no model of its own. A multilingual model is told the speech is English.
Audio beyond Whisper's 30 s window is not read.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np

from common.speech.transcript import SAMPLE_RATE, SpeechError, Transcript
from common.speech.vocabulary import CatalogVocabulary

log = logging.getLogger(__name__)

_MAX_NEW_TOKENS = 96


class WhisperTranscriber:
    """Greedy decoding; the confidence is the geometric mean of the tokens' probabilities."""

    name = "whisper"

    def __init__(self, folder: Path, *, device: str = "cpu") -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        if not folder.is_dir():
            raise SpeechError(f"speech.whisper_dir: no folder {folder}")
        try:
            self.processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
            model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise SpeechError(f"speech.whisper_dir: no Whisper model in {folder} ({exc})") from exc
        self.device = torch.device(_pick_device(device, torch.cuda.is_available()))
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # a torch.device
        config = self.model.generation_config
        english = "<|en|>" in (getattr(config, "lang_to_id", None) or {})
        self._options = {"language": "en", "task": "transcribe"} if english else {}
        self._max_new_tokens = min(_MAX_NEW_TOKENS, self.model.config.max_target_positions // 2)
        self._lock = threading.Lock()

    def use_vocabulary(self, vocabulary: CatalogVocabulary) -> None:
        """Nothing to do: Whisper can write any word."""

    def transcribe(self, samples: np.ndarray) -> Transcript:
        import torch

        features = self.processor(
            np.asarray(samples, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                features,
                max_new_tokens=self._max_new_tokens,
                return_dict_in_generate=True,
                output_scores=True,
                **self._options,
            )
            scores = self.model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )
        text = self.processor.batch_decode(out.sequences, skip_special_tokens=True)[0].strip()
        if not text:
            return Transcript("")
        logprobs = scores[0][torch.isfinite(scores[0])]
        confidence = math.exp(float(logprobs.mean())) if len(logprobs) else None
        return Transcript(text, None if confidence is None else round(confidence, 4))


def _pick_device(device: str, cuda: bool) -> str:
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        log.warning("speech.whisper_device = cuda but no GPU is available: using the CPU")
        return "cpu"
    return device
