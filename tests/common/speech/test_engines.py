import pytest

from common.config import ConfigError, SpeechConfig, config_from_dict
from common.speech.engines import create_transcriber
from common.speech.sphinx import SphinxTranscriber
from common.speech.transcript import SpeechError


def test_pocketsphinx_with_the_catalog_model_is_the_default():
    transcriber = create_transcriber(SpeechConfig())
    assert isinstance(transcriber, SphinxTranscriber) and not transcriber.general
    general = create_transcriber(SpeechConfig(language_model="general"))
    assert isinstance(general, SphinxTranscriber) and general.general


def test_off_means_no_recognizer():
    with pytest.raises(SpeechError, match="speech.engine = off"):
        create_transcriber(SpeechConfig(engine="off"))


@pytest.mark.parametrize(
    ("speech", "message"),
    [
        ({"engine": "whisper"}, "speech.whisper_dir: required when speech.engine is whisper"),
        ({"engine": "vosk"}, "speech.engine: must be 'pocketsphinx', 'whisper' or 'off'"),
        ({"max_seconds": 0}, "speech.max_seconds: must be in (0, 120]"),
        ({"min_rate": 48000, "max_rate": 16000}, "speech.min_rate: must be <= speech.max_rate"),
    ],
)
def test_bad_speech_settings_name_the_key(speech, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        config_from_dict({"speech": speech})
