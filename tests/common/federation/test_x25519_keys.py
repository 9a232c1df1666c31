"""SecAgg+ key agreement over X25519: agreement, refusals, and a whole SecAgg+ round with it."""

from __future__ import annotations

import base64
import importlib

import numpy as np
import pytest
from cryptography.fernet import Fernet
from flwr.supercore.primitives import asymmetric as flwr_keys

from common.federation import x25519_keys
from common.federation.secure_masks import secure_pseudo_rand_gen
from common.federation.x25519_keys import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    generate_shared_key,
    install_x25519_keys,
    private_key_to_bytes,
    public_key_to_bytes,
    x25519_keys_installed,
)

from .test_secure_masks_secaggplus import (
    random_updates,
    run_secaggplus,
    stamp_server_identity,
    survivors_mean,
    use_generators,
)

CLIENT = "flwr.client.mod.secure_aggregation.secaggplus_mod"
SERVER = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
FLWR_NAMES = {
    "generate_key_pairs": flwr_keys.generate_key_pairs,
    "private_key_to_bytes": flwr_keys.private_key_to_bytes,
    "public_key_to_bytes": flwr_keys.public_key_to_bytes,
    "bytes_to_private_key": flwr_keys.bytes_to_private_key,
    "bytes_to_public_key": flwr_keys.bytes_to_public_key,
}


def _pair() -> tuple[bytes, bytes]:
    """(private, public) key bytes as they travel in SecAgg+'s records."""
    private, public = generate_key_pairs()
    return private_key_to_bytes(private), public_key_to_bytes(public)


def _agree(private: bytes, public: bytes) -> bytes:
    return generate_shared_key(bytes_to_private_key(private), bytes_to_public_key(public))


def test_two_parties_agree_one_fernet_key_that_a_third_does_not_get() -> None:
    (a_private, a_public), (b_private, b_public) = _pair(), _pair()
    c_private, _ = _pair()
    key = _agree(a_private, b_public)
    assert key == _agree(b_private, a_public)
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert _agree(c_private, b_public) != key
    assert Fernet(_agree(b_private, a_public)).decrypt(Fernet(key).encrypt(b"share")) == b"share"
    assert len(a_private) == len(a_public) == 32


def test_keys_of_another_size_or_format_are_refused() -> None:
    pem_private, pem_public = flwr_keys.generate_key_pairs()  # flwr's P-384, PEM
    with pytest.raises(ValueError, match="32 raw bytes"):
        bytes_to_public_key(flwr_keys.public_key_to_bytes(pem_public))
    with pytest.raises(ValueError, match="32 raw bytes"):
        bytes_to_private_key(flwr_keys.private_key_to_bytes(pem_private))
    with pytest.raises(ValueError, match="32 raw bytes"):
        bytes_to_public_key(bytes(31))


def test_a_small_order_public_key_gives_no_agreed_key() -> None:
    private, _ = _pair()
    with pytest.raises(ValueError):
        _agree(private, bytes(32))  # the all-zero secret of a small-order point


def test_install_rebinds_the_secaggplus_modules_only(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = importlib.import_module(CLIENT), importlib.import_module(SERVER)
    for name, function in FLWR_NAMES.items():
        monkeypatch.setattr(client, name, function)
        if hasattr(server, name):
            monkeypatch.setattr(server, name, function)
    assert not x25519_keys_installed()
    install_x25519_keys()
    install_x25519_keys()  # idempotent
    assert x25519_keys_installed()
    assert client.generate_key_pairs is x25519_keys.generate_key_pairs
    assert server.generate_shared_key is x25519_keys.generate_shared_key
    # flwr's own P-384 functions (SuperNode authentication uses them) stay as they were
    assert flwr_keys.bytes_to_private_key is FLWR_NAMES["bytes_to_private_key"]


def test_a_secaggplus_round_with_a_dropped_device_unmasks_the_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server rebuilds the dropped device's private key from its shares and agrees its
    pairwise masks with X25519, as the devices did."""
    stamp_server_identity(monkeypatch)
    use_generators(monkeypatch, secure_pseudo_rand_gen, secure_pseudo_rand_gen)
    agreement = ("bytes_to_private_key", "bytes_to_public_key", "generate_shared_key")
    bindings = {CLIENT: (*agreement, *FLWR_NAMES), SERVER: agreement}
    for module, names in bindings.items():
        for name in names:
            monkeypatch.setattr(importlib.import_module(module), name, getattr(x25519_keys, name))
    assert x25519_keys_installed()
    updates = random_updates()
    aggregate = run_secaggplus(updates)
    for got, want in zip(aggregate, survivors_mean(updates), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
