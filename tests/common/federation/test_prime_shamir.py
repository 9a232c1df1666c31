"""Shamir's sharing over GF(2**521 - 1): any threshold of shares rebuilds the secret, fewer
do not, bad shares are refused, and both SecAgg+ sides use it once installed."""

from __future__ import annotations

import importlib
import itertools
import random

import pytest
from flwr.common.secure_aggregation.crypto import shamir as flwr_shamir

from common.federation.prime_shamir import (
    BLOCK_BYTES,
    ELEMENT_BYTES,
    MAX_COMBINED_SHARES,
    PRIME,
    ShareError,
    combine_shares,
    create_shares,
    install_prime_shamir,
    prime_shamir_installed,
    shares_agree,
)

CLIENT_MOD = "flwr.client.mod.secure_aggregation.secaggplus_mod"
SERVER_WORKFLOW = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 306])
def test_every_threshold_subset_rebuilds_the_secret(length: int) -> None:
    secret = random.Random(length).randbytes(length)
    shares = create_shares(secret, 3, 5)
    assert len(shares) == 5
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(list(subset)) == secret
    assert combine_shares(shares[::-1]) == secret  # more than the threshold, any order


def test_fewer_than_the_threshold_shares_do_not_rebuild_it() -> None:
    secret = bytes(range(32))
    shares = create_shares(secret, 4, 6)
    for subset in itertools.combinations(shares, 3):
        with pytest.raises(ValueError, match="do not rebuild"):
            combine_shares(list(subset))


def test_a_share_below_the_threshold_is_uniform_whatever_the_secret() -> None:
    """With threshold 2 a single share is secret + a·x for a uniform a: its values for two
    different secrets are spread alike over the field (coarse check of the top byte)."""
    tops = {
        secret: [create_shares(secret, 2, 2)[0][-1] for _ in range(400)]
        for secret in (bytes(32), b"\xff" * 32)
    }
    top_byte_max = (PRIME >> (8 * (ELEMENT_BYTES - 1))) + 1  # 2: the top byte is 0 or 1
    for values in tops.values():
        assert set(values) == set(range(top_byte_max))


@pytest.mark.parametrize(("threshold", "num"), [(1, 1), (1, 3), (11, 11), (7, 19)])
def test_thresholds_from_one_to_a_whole_neighbourhood(threshold: int, num: int) -> None:
    secret = random.Random(num).randbytes(306)
    shares = create_shares(secret, threshold, num)
    assert combine_shares(random.Random(0).sample(shares, threshold)) == secret


def test_each_block_has_its_own_random_polynomial() -> None:
    """Two equal blocks get different shares (a shared polynomial would reveal that they
    are equal, or their difference), and shares differ from one split to the next."""
    secret = bytes(BLOCK_BYTES) * 2
    first, second = create_shares(secret, 2, 2)[0], create_shares(secret, 2, 2)[0]
    blocks = [first[6 + i * ELEMENT_BYTES : 6 + (i + 1) * ELEMENT_BYTES] for i in range(2)]
    assert blocks[0] != blocks[1]
    assert first != second


def test_a_forged_share_at_index_zero_is_refused() -> None:
    """At x = 0 a share IS the secret: accepting one would let its sender set the result."""
    shares = create_shares(b"s" * 32, 2, 3)
    forged = (0).to_bytes(4, "little") + shares[0][4:]
    with pytest.raises(ValueError, match="non-zero"):
        combine_shares([forged, shares[1]])


def test_too_many_shares_are_refused_before_any_arithmetic() -> None:
    share = create_shares(b"s", 1, 1)[0]
    with pytest.raises(ValueError, match="at most"):
        combine_shares([share] * (MAX_COMBINED_SHARES + 1))


def altered(share: bytes, at: int) -> bytes:
    flipped = bytearray(share)
    flipped[at] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize("at", [6, 6 + 20, 6 + ELEMENT_BYTES + 3])  # low bytes of a block
def test_an_altered_share_rebuilds_a_wrong_secret_unnoticed_but_spares_disagree(at: int) -> None:
    secret = b"s" * 100  # two blocks
    shares = create_shares(secret, 3, 5)
    tampered = [altered(shares[0], at), *shares[1:]]
    assert combine_shares(tampered[:3]) != secret  # what combining alone cannot see
    assert shares_agree(shares, 3)
    assert not shares_agree(tampered, 3)
    assert not shares_agree(tampered[:4], 3)  # one spare suffices
    assert shares_agree(tampered[:3], 3)  # no spare: nothing to compare with
    assert all(shares_agree(subset, 3) for subset in itertools.combinations(shares, 4))


def test_shares_agree_checks_the_degree() -> None:
    shares = create_shares(b"d" * 64, 4, 6)
    assert shares_agree(shares, 4)
    assert not shares_agree(shares, 3)  # a degree-3 polynomial is not one of degree < 3
    with pytest.raises(ValueError, match="threshold"):
        shares_agree(shares, 0)
    with pytest.raises(ShareError, match="distinct"):
        shares_agree([shares[0], shares[0], shares[1]], 1)


def test_altered_or_mismatched_shares_are_refused() -> None:
    shares = create_shares(b"k" * 40, 2, 3)
    other = create_shares(b"k" * 80, 2, 3)
    with pytest.raises(ShareError, match="different"):
        combine_shares([shares[0], other[1]])
    relabelled = shares[1][:4] + (41).to_bytes(2, "little") + shares[1][6:]  # same size
    with pytest.raises(ValueError, match="different lengths"):
        combine_shares([shares[0], relabelled])
    with pytest.raises(ValueError, match="distinct"):
        combine_shares([shares[0], shares[0]])
    with pytest.raises(ValueError, match="no shares"):
        combine_shares([])
    with pytest.raises(ValueError, match="threshold"):
        create_shares(b"s", 4, 3)


def test_install_rebinds_the_client_mod_and_the_server_workflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From any other binding (flwr's own, or whatever an earlier import left) to ours."""
    client, server = (importlib.import_module(m) for m in (CLIENT_MOD, SERVER_WORKFLOW))

    def other(*args: object) -> None:
        raise AssertionError("not installed")

    for module, name in (
        (client, "create_shares"),
        (server, "combine_shares"),
        (flwr_shamir, "create_shares"),
        (flwr_shamir, "combine_shares"),
    ):
        monkeypatch.setattr(module, name, other)
    assert not prime_shamir_installed()
    install_prime_shamir()
    install_prime_shamir()  # idempotent
    assert prime_shamir_installed()
    assert client.create_shares is create_shares
    assert server.combine_shares is combine_shares
