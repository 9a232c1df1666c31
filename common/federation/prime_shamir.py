"""Shamir's secret sharing over the prime field of 2**521 − 1, for SecAgg+.

Each SecAgg+ device splits two secrets among its neighbours every round (a private key: 306
bytes of PEM with flwr's P-384, 32 with ``common.federation.x25519_keys``; and a 32-byte
seed), and the server rebuilds one of them per device. flwr 1.41
does this with pycryptodome's Shamir over GF(2**128) in pure Python, 16 bytes at a time:
about 14 ms of a device's round and 8 ms of the server's per device (51 ms per dropped
device) in neighbourhoods of 11, measured on 2 cores: at 1,000 devices a round, 8 s of
the server's round, and far more in the larger neighbourhoods that dropouts need.

Here a secret is cut into 64-byte blocks, each an element of GF(p), p = 2**521 − 1 (a
Mersenne prime, larger than any 512-bit block), shared with a random polynomial of degree
``threshold − 1`` whose coefficients come from ``secrets``, and rebuilt by Lagrange
interpolation at 0: Python's integers do the field arithmetic, ~100× faster. As with any
Shamir scheme, fewer than ``threshold`` shares reveal nothing about a block.

Rebuilding refuses too few shares with high probability (the blocks it rebuilds do not fit
their bytes) but not an altered one: the Lagrange weights are small, so a changed share
shifts the secret by a small multiple of the change. ``shares_agree`` checks that shares
beyond the threshold lie on one polynomial of degree < threshold; the server's unmask stage
(``server.federation.secure_aggregation``) keeps two spares per secret for it.

A share is ``<4-byte index><2-byte secret length><66 bytes per block>`` (little endian).
``install_prime_shamir`` rebinds flwr's ``create_shares`` / ``combine_shares`` in the client
mod and server workflow. Shares only combine where both sides split and rebuild the same
way, so devices (the ClientApp) and the server (the ServerApp) must BOTH install it.
"""

from __future__ import annotations

import functools
import secrets

from common.federation.flwr_bindings import bound, rebind

PRIME = 2**521 - 1
BLOCK_BYTES = 64
ELEMENT_BYTES = 66
MAX_SECRET_BYTES = 2**16 - 1
MAX_SHARES = 2**32 - 1
# Rebuilding costs O(shares²) big-integer steps (barycentric weights: 0.18 s at 1,000 shares,
# 2.9 s at 4,096, 46 s at 16,384 on 2 cores, idle): a malicious device that returns many
# forged shares for one owner is held to this many.
MAX_COMBINED_SHARES = 2**14
_HEADER = 6
_BINDINGS = {
    "flwr.common.secure_aggregation.crypto.shamir": ("create_shares", "combine_shares"),
    "flwr.client.mod.secure_aggregation.secaggplus_mod": ("create_shares",),
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow": ("combine_shares",),
}


class ShareError(ValueError):
    """The shares given cannot rebuild a secret: malformed, mixed, too few or altered."""


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
    """The secret the shares were split from (given at least the threshold of them).

    Too few shares are refused with high probability (the rebuilt blocks do not fit their
    bytes); an altered share is not (it shifts the secret by a multiple of a small Lagrange
    weight): ``shares_agree`` detects it given a spare share."""
    xs, elements, length = _parse(share_list)
    weights = _lagrange_at_zero(xs)
    secret = bytearray()
    for block, ys in enumerate(zip(*elements, strict=True)):
        value = sum(w * y for w, y in zip(weights, ys, strict=True)) % PRIME
        size = min(BLOCK_BYTES, length - block * BLOCK_BYTES)
        if value >= 1 << (8 * size):
            raise ShareError("the shares do not rebuild a secret (too few, or altered)")
        secret += value.to_bytes(size, "little")
    return bytes(secret)


def shares_agree(share_list: list[bytes], threshold: int) -> bool:
    """Whether the shares all lie on one polynomial of degree < ``threshold`` in every block,
    so that any ``threshold`` of them rebuild the same secret. An altered share disagrees
    with the others unless there is no spare: ``threshold`` shares or fewer always agree.

    With barycentric weights b_i of the m indexes, the interpolating polynomial has degree
    < m - k exactly when Σ b_i x_i^j y_i = 0 for j < k; O(spares x shares) per block."""
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    xs, elements, _ = _parse(share_list)
    weights = _barycentric(xs)
    for _ in range(len(xs) - threshold):
        for block in range(len(elements[0])):
            if sum(w * ys[block] for w, ys in zip(weights, elements, strict=True)) % PRIME:
                return False
        weights = [w * x % PRIME for w, x in zip(weights, xs, strict=True)]
    return True


def install_prime_shamir() -> None:
    """Make flwr's SecAgg+ (client mod and server workflow) share secrets with this module
    (idempotent). Call it in the ClientApp AND in the ServerApp module."""
    rebind(_BINDINGS, globals())


def prime_shamir_installed() -> bool:
    """Whether flwr's client mod and server workflow both use this module's functions."""
    return bound(_BINDINGS, globals())


def _evaluate(coefficients: list[int], x: int) -> int:
    """The polynomial with these coefficients (constant first) at ``x``, mod PRIME."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


def _parse(share_list: list[bytes]) -> tuple[tuple[int, ...], list[list[int]], int]:
    """(indexes, field elements per share, secret length) of well-formed shares of one
    secret, sorted by index; ShareError otherwise."""
    if not share_list:
        raise ShareError("no shares to combine")
    if len(share_list) > MAX_COMBINED_SHARES:
        raise ShareError(f"{len(share_list)} shares: at most {MAX_COMBINED_SHARES} are combined")
    share_list = sorted(share_list, key=lambda share: share[:4][::-1])  # by index
    length = int.from_bytes(share_list[0][4:_HEADER], "little")
    blocks = -(-length // BLOCK_BYTES)
    if any(len(share) != _HEADER + blocks * ELEMENT_BYTES for share in share_list):
        raise ShareError("shares of different secrets or malformed shares")
    if any(share[4:_HEADER] != share_list[0][4:_HEADER] for share in share_list):
        raise ShareError("shares of secrets of different lengths")
    xs = tuple(int.from_bytes(share[:4], "little") for share in share_list)
    if 0 in xs or len(set(xs)) != len(xs):
        raise ShareError("share indexes must be distinct and non-zero")
    elements = [
        [
            int.from_bytes(share[start : start + ELEMENT_BYTES], "little")
            for start in range(_HEADER, len(share), ELEMENT_BYTES)
        ]
        for share in share_list
    ]
    return xs, elements, length


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> list[int]:
    """Weights w_i with f(0) = Σ w_i f(x_i) for any polynomial of degree < len(xs): O(len(xs))
    after ``_barycentric`` (cached: the devices of a round often return shares at the same
    indexes)."""
    minus_xs = [-x % PRIME for x in xs]
    product = 1
    for minus_x in minus_xs:
        product = product * minus_x % PRIME
    return [
        product * b * inverse % PRIME
        for b, inverse in zip(_barycentric(xs), _inverses(minus_xs), strict=True)
    ]


@functools.lru_cache(maxsize=256)
def _barycentric(xs: tuple[int, ...]) -> list[int]:
    """1 / Π_{j != i} (x_i - x_j) for each i, mod PRIME."""
    products = []
    for i, xi in enumerate(xs):
        product = 1
        for j, xj in enumerate(xs):
            if j != i:
                product = product * (xi - xj) % PRIME
        products.append(product)
    return _inverses(products)


def _inverses(values: list[int]) -> list[int]:
    """Each value's inverse mod PRIME with one modular inversion (Montgomery's trick)."""
    prefix = [1]
    for value in values:
        prefix.append(prefix[-1] * value % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    inverses = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return inverses
