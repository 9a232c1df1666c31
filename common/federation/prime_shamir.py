"""Shamir's secret sharing over the prime field of 2**521 − 1, for SecAgg+.

Each SecAgg+ device splits two secrets among its neighbours every round (its 306-byte
private key and a 32-byte seed), and the server rebuilds one of them per device. flwr 1.41
does this with pycryptodome's Shamir over GF(2**128) in pure Python, 16 bytes at a time:
about 14 ms of a device's round and 8 ms of the server's per device (51 ms per dropped
device) in neighbourhoods of 11, measured on 2 cores: at 1,000 devices a round, 8 s of
the server's round, and far more in the larger neighbourhoods that dropouts need.

Here a secret is cut into 64-byte blocks, each an element of GF(p), p = 2**521 − 1 (a
Mersenne prime, larger than any 512-bit block), shared with a random polynomial of degree
``threshold − 1`` whose coefficients come from ``secrets``, and rebuilt by Lagrange
interpolation at 0: Python's integers do the field arithmetic, ~100× faster. As with any
Shamir scheme, fewer than ``threshold`` shares reveal nothing about a block.

A share is ``<4-byte index><2-byte secret length><66 bytes per block>`` (little endian).
``install_prime_shamir`` rebinds flwr's ``create_shares`` / ``combine_shares`` in the client
mod and server workflow. Shares only combine where both sides split and rebuild the same
way, so devices (the ClientApp) and the server (the ServerApp) must BOTH install it.
"""

from __future__ import annotations

import functools
import importlib
import secrets
import threading

PRIME = 2**521 - 1
BLOCK_BYTES = 64
ELEMENT_BYTES = 66
MAX_SECRET_BYTES = 2**16 - 1
MAX_SHARES = 2**32 - 1
# Rebuilding costs O(shares²) big-integer steps (Lagrange weights: 0.35 s at 1,000 shares,
# 5.5 s at 4,096, 82 s at 16,384 on 2 cores): a malicious device that returns many forged
# shares for one owner is held to this many.
MAX_COMBINED_SHARES = 2**14
_HEADER = 6
_BINDINGS = {
    "flwr.common.secure_aggregation.crypto.shamir": ("create_shares", "combine_shares"),
    "flwr.client.mod.secure_aggregation.secaggplus_mod": ("create_shares",),
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow": ("combine_shares",),
}
_LOCK = threading.Lock()


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``, any ``threshold`` of which rebuild it (flwr's signature)."""
    if not 1 <= threshold <= num <= MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= num <= 2**32-1, got {threshold} and {num}")
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret of {len(secret)} bytes: at most {MAX_SECRET_BYTES}")
    header = len(secret).to_bytes(2, "little")
    shares = [bytearray(x.to_bytes(4, "little") + header) for x in range(1, num + 1)]
    for start in range(0, len(secret), BLOCK_BYTES):
        value = int.from_bytes(secret[start : start + BLOCK_BYTES], "little")
        coefficients = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for x, share in enumerate(shares, start=1):
            share += _evaluate(coefficients, x).to_bytes(ELEMENT_BYTES, "little")
    return [bytes(share) for share in shares]


def combine_shares(share_list: list[bytes]) -> bytes:
    """The secret the shares were split from (given at least the threshold of them)."""
    if not share_list:
        raise ValueError("no shares to combine")
    if len(share_list) > MAX_COMBINED_SHARES:
        raise ValueError(f"{len(share_list)} shares: at most {MAX_COMBINED_SHARES} are combined")
    share_list = sorted(share_list, key=lambda share: share[:4][::-1])  # by index
    length = int.from_bytes(share_list[0][4:_HEADER], "little")
    blocks = -(-length // BLOCK_BYTES)
    xs = [int.from_bytes(share[:4], "little") for share in share_list]
    if any(len(share) != _HEADER + blocks * ELEMENT_BYTES for share in share_list):
        raise ValueError("shares of different secrets or malformed shares")
    if any(share[4:_HEADER] != share_list[0][4:_HEADER] for share in share_list):
        raise ValueError("shares of secrets of different lengths")
    if 0 in xs or len(set(xs)) != len(xs):
        raise ValueError("share indexes must be distinct and non-zero")
    weights = _lagrange_at_zero(tuple(xs))
    secret = bytearray()
    for block in range(blocks):
        start = _HEADER + block * ELEMENT_BYTES
        ys = [
            int.from_bytes(share[start : start + ELEMENT_BYTES], "little") for share in share_list
        ]
        value = sum(w * y for w, y in zip(weights, ys, strict=True)) % PRIME
        size = min(BLOCK_BYTES, length - block * BLOCK_BYTES)
        if value >= 1 << (8 * size):
            raise ValueError("the shares do not rebuild a secret (too few, or altered)")
        secret += value.to_bytes(size, "little")
    return bytes(secret)


def install_prime_shamir() -> None:
    """Make flwr's SecAgg+ (client mod and server workflow) share secrets with this module
    (idempotent). Call it in the ClientApp AND in the ServerApp module."""
    with _LOCK:
        for module_name, names in _BINDINGS.items():
            module = importlib.import_module(module_name)
            for name in names:
                setattr(module, name, globals()[name])


def prime_shamir_installed() -> bool:
    """Whether flwr's client mod and server workflow both use this module's functions."""
    return all(
        getattr(importlib.import_module(module_name), name) is globals()[name]
        for module_name, names in _BINDINGS.items()
        for name in names
    )


def _evaluate(coefficients: list[int], x: int) -> int:
    """The polynomial with these coefficients (constant first) at ``x``, mod PRIME."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> list[int]:
    """Weights w_i with f(0) = Σ w_i f(x_i) for any polynomial of degree < len(xs) (cached:
    the devices of a round often return shares at the same indexes)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights
