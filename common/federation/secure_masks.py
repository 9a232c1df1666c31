"""SecAgg+ masks drawn from the full agreed secret, not from a 32-bit seed.

flwr 1.41 expands every SecAgg+ mask (a device's self-mask and each pairwise mask) with
``pseudo_rand_gen``, which XOR-folds the 256-bit secret down to 32 bits and seeds numpy's
Mersenne Twister with that (Flower issue #7522). A curious server that rebuilds a surviving
device's self-mask seed, and whose other neighbours dropped, then faces one 32-bit seed: a
brute force of 2**32 candidates recovers the mask and hence that device's update.

Here the whole secret keys ChaCha20 (via HKDF-SHA256 with a label of our own), and the
keystream, read as little-endian 64-bit words, gives the mask entries. Each key draws one
mask, so a fixed nonce is safe. ``install_secure_masks`` swaps this generator into flwr
without editing flwr. Masks only cancel when every party derives them the same way, so
devices (the ClientApp) and the server (the ServerApp) must BOTH install it.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASK_KEY_LABEL = b"fedsearch/secaggplus-mask/chacha20/v1"
MAX_MASK_RANGE = 2**62

# ChaCha20 in `cryptography` takes 16 bytes: a 32-bit block counter then a 96-bit nonce.
_NONCE = bytes(16)
_WORD = np.dtype("<u8")
_ZEROS = bytes(1 << 16)
_UTILS = "flwr.common.secure_aggregation.secaggplus_utils"
# The flwr modules known to bind the generator by name (client mod, server workflow).
_USERS = (
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)
_NAME = "pseudo_rand_gen"
_LOCK = threading.Lock()


def secure_pseudo_rand_gen(
    seed: bytes, num_range: int, dimensions_list: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """One int64 array per shape, uniform in [0, num_range), keyed by all of ``seed``.

    A drop-in for flwr's ``pseudo_rand_gen``: same arguments, same list of int64 arrays
    (0-d for an empty shape). ``num_range`` must be a power of two up to 2**62, so the low
    bits of a uniform 64-bit word are uniform with no modulo bias. (flwr's never draws
    ``num_range - 1``; masks are added modulo ``num_range``, so unmasking is unaffected.)
    """
    low_bits = np.uint64(_check_range(num_range) - 1)
    stream = _keystream(seed)
    return [_draw(stream, tuple(shape), low_bits) for shape in dimensions_list]


def _check_range(num_range: int) -> int:
    """``num_range`` if it is a power of two in [1, 2**62], else ValueError."""
    if not 1 <= num_range <= MAX_MASK_RANGE or num_range & (num_range - 1):
        raise ValueError(f"mask range must be a power of two up to 2**62, got {num_range}")
    return num_range


def _keystream(seed: bytes) -> CipherContext:
    """A ChaCha20 keystream under a key derived from every byte of ``seed``."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASK_KEY_LABEL).derive(
        bytes(seed)
    )
    return Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()


def _draw(stream: CipherContext, shape: tuple[int, ...], low_bits: np.uint64) -> np.ndarray:
    """The next ``prod(shape)`` words of the keystream, cut to the range, as int64."""
    words = np.empty(math.prod(shape), dtype=_WORD)
    _fill(stream, words.data.cast("B"))
    words &= low_bits
    # Values stay below 2**62, so the same bits read as int64 are the same numbers.
    return words.view("<i8").reshape(shape)


def _fill(stream: CipherContext, out: memoryview) -> None:
    """Write the next ``len(out)`` keystream bytes into ``out``, in place.

    Encrypting zeros yields the bare keystream; a small reused block of zeros (rather than
    one as long as the mask) avoids allocating, and page-faulting, a second large buffer.
    """
    zeros = memoryview(_ZEROS)
    for start in range(0, len(out), len(zeros)):
        part = out[start : start + len(zeros)]
        stream.update_into(zeros[: len(part)], part)


def install_secure_masks() -> None:
    """Make flwr's SecAgg+ (client mod and server workflow) use ``secure_pseudo_rand_gen``.

    Rebinds the name in flwr's utils module (for modules imported later) and in every
    loaded flwr module that imported it by name. Idempotent. Call it in the ClientApp AND
    in the ServerApp module: a mismatch leaves the sum masked.
    """
    with _LOCK:
        for module in _flwr_modules():
            if getattr(module, _NAME, None) is not secure_pseudo_rand_gen:
                setattr(module, _NAME, secure_pseudo_rand_gen)


def secure_masks_installed() -> bool:
    """Whether flwr's utils, client mod and server workflow all use our generator."""
    return all(getattr(module, _NAME, None) is secure_pseudo_rand_gen for module in _flwr_modules())


def _flwr_modules() -> list[ModuleType]:
    """flwr's utils and known users (imported here), plus any loaded module binding it."""
    known = [importlib.import_module(name) for name in (_UTILS, *_USERS)]
    others = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("flwr.") and _binds_generator(module)
    ]
    return list({id(module): module for module in known + others}.values())


def _binds_generator(module: object) -> bool:
    """Whether ``module`` holds flwr's generator, or ours, under flwr's name."""
    value = getattr(module, "__dict__", {}).get(_NAME)
    return value is secure_pseudo_rand_gen or getattr(value, "__module__", None) == _UTILS
