"""Spoken-query audio: WAV files read, checked and turned into 16 kHz mono samples.

A WAV file is a RIFF container: ``RIFF <size> WAVE`` then chunks of ``<id> <size>
<bytes>`` (padded to an even size), among them ``fmt `` (encoding, channels, rate, bits)
and ``data`` (the samples, interleaved by channel). Accepted: 16-bit PCM (format 1, or
WAVE_FORMAT_EXTENSIBLE with a PCM sub-format), mono or stereo, at a rate within the
``speech`` config's. Stereo is averaged to mono and the rate converted with a polyphase
filter. A data chunk said to be longer than the file is read to its end: recorders that
write to a pipe cannot go back to fill in the size and leave a placeholder (espeak-ng's
is 2 GB). Everything else gets an ``AudioError`` carrying the HTTP status to answer: 415 for
another format, 413 over the size or duration limits, 422 for an empty or damaged file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from common.config import SpeechConfig
from common.speech.transcript import SAMPLE_RATE

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_SIGNATURES = {
    b"OggS": "Ogg (Opus or Vorbis)",
    b"\x1aE\xdf\xa3": "WebM/Matroska",
    b"fLaC": "FLAC",
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"RIFX": "big-endian WAV",
    b"FORM": "AIFF",
}
_SEND = "send WAV, 16-bit PCM, mono or stereo"


class AudioError(ValueError):
    """Audio the service cannot take, with the HTTP ``status`` that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WavFormat:
    channels: int
    rate: int
    bits: int


def decode_wav(data: bytes, config: SpeechConfig) -> np.ndarray:
    """The speech in a WAV file as float32 samples in [-1, 1], mono, at ``SAMPLE_RATE``."""
    if not data:
        raise AudioError(422, "the audio is empty")
    if len(data) > config.max_bytes:
        raise AudioError(413, f"audio over {config.max_bytes} bytes")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(415, f"not a WAV file ({_guess_format(data)}): {_SEND}")
    fmt, samples = _chunks(data)
    _check_format(fmt, config)
    frames = len(samples) // (2 * fmt.channels)
    if frames == 0:
        raise AudioError(422, "the WAV file holds no samples")
    seconds = frames / fmt.rate
    if seconds > config.max_seconds:
        raise AudioError(413, f"audio is {seconds:.1f} s long: at most {config.max_seconds:g} s")
    pcm = np.frombuffer(samples[: frames * 2 * fmt.channels], dtype="<i2")
    mono = pcm.reshape(frames, fmt.channels).astype(np.float32).mean(axis=1) / 32768.0
    return resample(mono, fmt.rate)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """``samples`` at ``rate`` Hz converted to ``SAMPLE_RATE`` (low-pass filtered)."""
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    common = gcd(rate, SAMPLE_RATE)
    out = resample_poly(samples, SAMPLE_RATE // common, rate // common)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _guess_format(data: bytes) -> str:
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return f"looks like {name}"
    if data[4:8] == b"ftyp":
        return "looks like MP4/M4A"
    return "unknown format"


def _chunks(data: bytes) -> tuple[WavFormat, bytes]:
    """The ``fmt `` chunk and the ``data`` bytes; 422 when either is missing or cut."""
    fmt: WavFormat | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt = _read_fmt(data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError(422, "damaged WAV header: the data chunk comes before fmt")
            return fmt, data[body : body + size]
        offset = body + size + (size & 1)
    what = "fmt chunk" if fmt is None else "data chunk"
    raise AudioError(422, f"damaged WAV header: no {what}")


def _read_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise AudioError(422, f"damaged WAV header: fmt chunk of {len(body)} bytes")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise AudioError(422, "damaged WAV header: short WAVE_FORMAT_EXTENSIBLE fmt chunk")
        if body[26:40] != _GUID_TAIL:
            raise AudioError(415, f"WAV with an unknown sub-format: {_SEND}")
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag == _FLOAT:
        raise AudioError(415, f"WAV with 32-bit float samples: {_SEND}")
    if tag != _PCM:
        raise AudioError(415, f"WAV encoding {tag:#06x} is not PCM: {_SEND}")
    if channels == 0 or rate == 0 or block_align != channels * bits // 8:
        raise AudioError(
            422,
            f"damaged WAV header: {channels} channels, {rate} Hz, {bits} bits, "
            f"block align {block_align}",
        )
    return WavFormat(channels, rate, bits)


def _check_format(fmt: WavFormat, config: SpeechConfig) -> None:
    if fmt.bits != 16:
        raise AudioError(415, f"{fmt.bits}-bit PCM WAV: {_SEND}")
    if fmt.channels > 2:
        raise AudioError(415, f"{fmt.channels}-channel WAV: {_SEND}")
    if not config.min_rate <= fmt.rate <= config.max_rate:
        raise AudioError(
            415,
            f"sample rate {fmt.rate} Hz: {config.min_rate}..{config.max_rate} Hz accepted",
        )
