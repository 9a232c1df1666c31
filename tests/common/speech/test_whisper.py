"""The Whisper path with a tiny randomly initialised model saved to a temporary folder:
real loading (``from_pretrained`` of the folder, offline), real feature extraction and
generation; the words are random."""

import numpy as np
import pytest
import torch

from common.config import SpeechConfig
from common.speech.engines import create_transcriber
from common.speech.transcript import SpeechError, Transcript
from common.speech.vocabulary import CatalogVocabulary
from common.speech.whisper import WhisperTranscriber

SPECIAL = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]  # fmt: skip


def save_tiny_whisper(folder, *, multilingual: bool = True) -> None:
    """A 2-layer Whisper with a byte-level tokenizer (no merges), saved like a real one."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    ids = tokenizer.convert_tokens_to_ids(SPECIAL)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=32,
        pad_token_id=ids[0], bos_token_id=ids[0], eos_token_id=ids[0],
        decoder_start_token_id=ids[1],
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation._from_model_config = False
    generation.begin_suppress_tokens = None
    generation.no_timestamps_token_id = ids[8]
    generation.is_multilingual = multilingual
    if multilingual:
        generation.lang_to_id = {"<|en|>": ids[2]}
        generation.task_to_id = {"translate": ids[3], "transcribe": ids[4]}
    model.save_pretrained(folder)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-whisper")
    save_tiny_whisper(folder)
    return folder


NOISE = np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32)


def test_a_local_whisper_model_transcribes(tmp_path, one_torch_thread):
    save_tiny_whisper(tmp_path, multilingual=False)
    transcriber = create_transcriber(SpeechConfig(engine="whisper", whisper_dir=str(tmp_path)))
    assert isinstance(transcriber, WhisperTranscriber) and transcriber.device.type == "cpu"
    transcriber.use_vocabulary(CatalogVocabulary())  # an open vocabulary: nothing to do
    heard = transcriber.transcribe(NOISE)
    assert heard.text  # random weights, random words
    assert heard.confidence is not None and 0 < heard.confidence <= 1
    assert heard == transcriber.transcribe(NOISE)  # greedy decoding


def test_a_multilingual_model_is_told_the_speech_is_english(whisper_dir, one_torch_thread):
    transcriber = WhisperTranscriber(whisper_dir)
    assert transcriber._options == {"language": "en", "task": "transcribe"}
    assert isinstance(transcriber.transcribe(NOISE), Transcript)


def test_a_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpeechError, match="speech.whisper_dir: no folder"):
        WhisperTranscriber(tmp_path / "absent")
    with pytest.raises(SpeechError, match="speech.whisper_dir: no Whisper model"):
        WhisperTranscriber(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without a GPU")
def test_cuda_without_a_gpu_falls_back_to_the_cpu_and_says_so(whisper_dir, caplog):
    transcriber = WhisperTranscriber(whisper_dir, device="cuda")
    assert transcriber.device.type == "cpu"
    assert "no GPU is available: using the CPU" in caplog.text
