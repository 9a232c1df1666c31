"""Random numbers from a ChaCha20 keystream: unpredictable without the key.

Noise that protects a device's update, cohorts the server samples, and anything else whose
secrecy matters draws from ``KeystreamRandom``: a 256-bit key from the operating system
(``KeystreamRandom.from_os()``) on real devices and servers, or a key derived from a private
seed in simulations, which must be reproducible (``KeystreamRandom.from_seed``). numpy's
generators are fast but their state can be inferred from their output, and a 32-bit seed
can be searched; a stream cipher has neither weakness.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

STREAM_KEY_BYTES = 32
_NONCE = bytes(12)  # each key is fresh (OS) or derived for one purpose, so one fixed nonce
_BLOCK = 64  # bytes per ChaCha20 block; the 16-byte IV is a 4-byte block counter + _NONCE


class KeystreamRandom:
    """Uniform integers and floats from ChaCha20(key); ``position`` counts the bytes drawn
    and ``seek`` continues a stream from there (a restarted server's draws)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != STREAM_KEY_BYTES:
            raise ValueError(f"key must be {STREAM_KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self.position = 0
        self.seek(0)

    def seek(self, position: int) -> None:
        """Continue the stream at byte ``position``."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        block, skip = divmod(position, _BLOCK)
        iv = block.to_bytes(4, "little") + _NONCE
        self._cipher = Cipher(algorithms.ChaCha20(self._key, iv), mode=None).encryptor()
        self._cipher.update(bytes(skip))
        self.position = position

    @classmethod
    def from_os(cls) -> KeystreamRandom:
        return cls(os.urandom(STREAM_KEY_BYTES))

    @classmethod
    def from_seed(cls, *parts: object) -> KeystreamRandom:
        """A generator keyed by SHA-256 of ``parts`` (reproducible; keep the parts private)."""
        text = "\x1f".join(str(p) for p in parts).encode("utf-8")
        return cls(hashlib.sha256(b"fedsearch-keystream\x00" + text).digest())

    def bytes(self, n: int) -> bytes:
        self.position += n
        return self._cipher.update(bytes(n))

    def uint64(self, size: int) -> np.ndarray:
        """``size`` uniform 64-bit unsigned integers."""
        return np.frombuffer(self.bytes(8 * size), dtype=np.uint64).copy()

    def uniform(self, size: int) -> np.ndarray:
        """``size`` floats uniform on the open interval (0, 1), 53 bits each."""
        return ((self.uint64(size) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53

    def normal(self, size: int) -> np.ndarray:
        """``size`` standard normal floats (Box-Muller over ``uniform``)."""
        half = (size + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        out = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
        return out[:size]

    def bernoulli(self, p: float, size: int) -> np.ndarray:
        """``size`` independent booleans, each True with probability ``p``."""
        return self.uniform(size) < p
