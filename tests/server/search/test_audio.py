import struct

import numpy as np
import pytest

from common.config import SpeechConfig
from server.search.audio import AudioError, decode_wav

CONFIG = SpeechConfig()
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def fmt_chunk(channels=1, rate=16000, bits=16, tag=PCM, sub_tag=None) -> bytes:
    align = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if tag == EXTENSIBLE:
        body += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", sub_tag) + GUID_TAIL
    return b"fmt " + struct.pack("<I", len(body)) + body


def wav(samples: np.ndarray, rate=16000, *, fmt: bytes | None = None, extra=b"", size=None):
    """A WAV file of int16 ``samples`` (frames x channels, or 1-d for mono)."""
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    data = samples.astype("<i2").tobytes()
    fmt = fmt if fmt is not None else fmt_chunk(channels, rate)
    chunks = extra + fmt + b"data" + struct.pack("<I", len(data) if size is None else size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def tone(hz: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(10_000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_16k_mono_is_read_as_is():
    pcm = tone(300, 16000)
    out = decode_wav(wav(pcm), CONFIG)
    assert out.dtype == np.float32 and len(out) == 16000
    np.testing.assert_allclose(out, pcm / 32768.0, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_common_rates_are_resampled_to_16k(rate):
    out = decode_wav(wav(tone(440, rate), rate), CONFIG)
    assert abs(len(out) - 16000) <= 1
    assert abs(peak_hz(out) - 440) <= 2


def test_stereo_is_averaged_to_mono():
    left, right = tone(440, 16000), np.zeros(16000, np.int16)
    out = decode_wav(wav(np.stack([left, right], axis=1)), CONFIG)
    np.testing.assert_allclose(out, left / 2 / 32768.0, atol=1e-4)


def test_extensible_pcm_other_chunks_and_placeholder_sizes_are_read():
    pcm = tone(440, 16000, 0.5)
    listing = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size, padded
    fmt = fmt_chunk(tag=EXTENSIBLE, sub_tag=PCM)
    out = decode_wav(wav(pcm, fmt=fmt, extra=listing, size=0xFFFFFFFF), CONFIG)
    assert len(out) == 8000 and abs(peak_hz(out) - 440) <= 2


BAD = {
    "empty": (b"", 422, "empty"),
    "not audio": (b"%PDF-1.7 not a sound at all", 415, "not a WAV file (unknown format)"),
    "ogg": (b"OggS\x00\x02" + bytes(64), 415, "looks like Ogg"),
    "webm": (b"\x1aE\xdf\xa3" + bytes(64), 415, "looks like WebM"),
    "8-bit": (wav(np.zeros(100), fmt=fmt_chunk(bits=8)), 415, "8-bit PCM WAV"),
    "float": (wav(np.zeros(100), fmt=fmt_chunk(tag=FLOAT, bits=32)), 415, "32-bit float"),
    "mp3 in wav": (wav(np.zeros(100), fmt=fmt_chunk(tag=0x55)), 415, "0x0055 is not PCM"),
    "6 channels": (wav(np.zeros((100, 6))), 415, "6-channel WAV"),
    "4 kHz": (wav(np.zeros(100), rate=4000), 415, "sample rate 4000 Hz"),
    "too long": (wav(np.zeros(16 * 16000)), 413, "audio is 16.0 s long: at most 15 s"),
    "short fmt": (wav(np.zeros(9), fmt=b"fmt \x08\x00\x00\x00" + bytes(8)), 422, "fmt chunk of 8"),
    "bad block align": (
        wav(np.zeros(100), fmt=fmt_chunk()[:20] + struct.pack("<HH", 7, 16)), 422, "block align 7"
    ),
    "no fmt": (b"RIFF\x04\x00\x00\x00WAVE", 422, "no fmt chunk"),
    "data first": (
        b"RIFF\x10\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00", 422, "before fmt"
    ),
    "no samples": (wav(np.zeros(0)), 422, "holds no samples"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_audio_is_refused_with_a_status_and_a_reason(case):
    data, status, message = BAD[case]
    with pytest.raises(AudioError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        decode_wav(data, CONFIG)
    assert info.value.status == status


def test_files_over_the_byte_limit_are_refused_before_parsing():
    with pytest.raises(AudioError, match="audio over 1000 bytes") as info:
        decode_wav(wav(np.zeros(1000)), SpeechConfig(max_bytes=1000))
    assert info.value.status == 413
