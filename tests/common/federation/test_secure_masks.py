"""SecAgg+ masks keyed by the whole secret (Flower issue #7522), and their use by flwr."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.federation.secure_masks import (
    MASK_KEY_LABEL,
    install_secure_masks,
    secure_masks_installed,
    secure_pseudo_rand_gen,
)

ROOT = Path(__file__).resolve().parents[3]
SECRET = bytes.fromhex("5f1c0b7a9e2d43c18a6f0e3b7d9c2a4158e07b3f6d1a9c2e4b8f0a3d6c1e9b27")
RANGE = 2**32  # flwr's default SecAgg+ modulus, the one the project uses
UTILS = "flwr.common.secure_aggregation.secaggplus_utils"
USERS = (
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)


def fresh_copy(name: str) -> ModuleType:
    """A private, unpatched copy of flwr module ``name`` (whatever install did to it)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    copy_spec = importlib.util.spec_from_file_location(name, spec.origin)  # not registered
    assert copy_spec is not None and copy_spec.loader is not None
    module = importlib.util.module_from_spec(copy_spec)
    copy_spec.loader.exec_module(module)
    return module


FLWR_GEN = fresh_copy(UTILS).pseudo_rand_gen


def fold32(seed: bytes) -> int:
    """flwr's seed: the XOR of the secret's little-endian 32-bit words."""
    out = 0
    for i in range(0, len(seed), 4):
        out ^= int.from_bytes(seed[i : i + 4], "little")
    return out


def mt_mask(seed32: int, size: int) -> np.ndarray:
    """What numpy's Mersenne Twister seeded with ``seed32`` draws, the way flwr draws."""
    return np.random.RandomState(seed32).randint(0, RANGE - 1, size, dtype=np.int64)


def search_32_bit_seeds(target: np.ndarray, seeds: range) -> int | None:
    """The first seed whose Mersenne Twister output starts like ``target``, else None."""
    return next((s for s in seeds if np.array_equal(mt_mask(s, target.size), target)), None)


def test_every_bit_of_the_secret_changes_the_mask() -> None:
    base = secure_pseudo_rand_gen(SECRET, RANGE, [(64,)])[0]
    for bit in range(8 * len(SECRET)):
        flipped = bytearray(SECRET)
        flipped[bit // 8] ^= 1 << (bit % 8)
        mask = secure_pseudo_rand_gen(bytes(flipped), RANGE, [(64,)])[0]
        assert np.count_nonzero(mask == base) <= 1, f"bit {bit}"


def test_secrets_that_flwr_folds_alike_get_different_masks() -> None:
    twin = bytearray(SECRET)
    for i in (0, 4):  # the same value XORed into two words cancels in the fold
        twin[i : i + 4] = (int.from_bytes(twin[i : i + 4], "little") ^ 0xDEADBEEF).to_bytes(
            4, "little"
        )
    twin_secret = bytes(twin)
    assert twin_secret != SECRET and fold32(twin_secret) == fold32(SECRET)
    shape = [(1000,)]
    assert np.array_equal(FLWR_GEN(SECRET, RANGE, shape)[0], FLWR_GEN(twin_secret, RANGE, shape)[0])
    ours, ours_twin = (secure_pseudo_rand_gen(s, RANGE, shape)[0] for s in (SECRET, twin_secret))
    assert np.count_nonzero(ours == ours_twin) <= 1


def test_a_32_bit_seed_search_finds_flwrs_mask_but_not_ours() -> None:
    fold = fold32(SECRET)
    seeds = range(max(fold - 2000, 0), min(fold + 2000, 2**32))
    flwr_mask = FLWR_GEN(SECRET, RANGE, [(16,)])[0]
    assert search_32_bit_seeds(flwr_mask, seeds) == fold
    ours = secure_pseudo_rand_gen(SECRET, RANGE, [(16,)])[0]
    assert search_32_bit_seeds(ours, seeds) is None


@pytest.mark.parametrize("num_range", [2, 2**16, 2**32, 2**62])
def test_masks_are_uniform_over_the_whole_range(num_range: int) -> None:
    mask = secure_pseudo_rand_gen(SECRET, num_range, [(100_000,)])[0]
    assert mask.min() >= 0 and mask.max() < num_range
    assert abs(mask.astype(np.float64).mean() - (num_range - 1) / 2) < 0.01 * num_range
    top = num_range.bit_length() - 2
    for bit in {0, top // 2, top}:  # lowest, a middle and the highest bit in range
        assert abs(np.mean((mask >> bit) & 1) - 0.5) < 0.01, f"bit {bit}"


def test_a_range_of_one_gives_zero_masks() -> None:
    assert not secure_pseudo_rand_gen(SECRET, 1, [(100,)])[0].any()


@pytest.mark.parametrize("num_range", [0, 3, 1000, 2**32 - 1, 2**63, 2**64, -4])
def test_a_range_that_would_bias_or_overflow_is_refused(num_range: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        secure_pseudo_rand_gen(SECRET, num_range, [(4,)])


def test_same_secret_same_masks_with_flwrs_shapes_and_dtypes() -> None:
    shapes = [(3, 4), (), (0, 5), (7,), (2, 3, 4)]
    ours = secure_pseudo_rand_gen(SECRET, RANGE, shapes)
    again = secure_pseudo_rand_gen(SECRET, RANGE, shapes)
    theirs = FLWR_GEN(SECRET, RANGE, shapes)
    assert isinstance(ours, list) and len(ours) == len(theirs) == len(shapes)
    for shape, mine, repeat, flwr in zip(shapes, ours, again, theirs, strict=True):
        assert isinstance(mine, np.ndarray) and mine.flags.writeable
        assert mine.shape == flwr.shape == shape
        assert mine.dtype == flwr.dtype == np.int64
        assert np.array_equal(mine, repeat)


def test_masks_are_the_documented_chacha20_keystream() -> None:
    """HKDF-SHA256(secret, label) keys ChaCha20 (zero nonce); words are little-endian u64.

    Pins the construction, so devices and servers of different builds agree; 20,000 words
    run across the generator's internal 8,192-word blocks and across arrays of the list.
    """
    key = HKDF(hashes.SHA256(), 32, salt=None, info=MASK_KEY_LABEL).derive(SECRET)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * 20_000)), dtype="<u8")
    expected = (words & np.uint64(RANGE - 1)).astype(np.int64)
    first, rest = secure_pseudo_rand_gen(SECRET, RANGE, [(3,), (19_997,)])
    assert np.array_equal(np.concatenate([first, rest]), expected)


def test_install_rebinds_flwrs_generator_in_utils_client_mod_and_server_workflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modules = [importlib.import_module(name) for name in (UTILS, *USERS)]
    for module in modules:  # start from flwr's own; monkeypatch restores the rest after
        monkeypatch.setattr(module, "pseudo_rand_gen", FLWR_GEN)
    assert not secure_masks_installed()
    install_secure_masks()
    install_secure_masks()  # idempotent
    assert secure_masks_installed()
    assert all(module.pseudo_rand_gen is secure_pseudo_rand_gen for module in modules)
    # A module that imports the name after install gets ours from the utils module.
    assert fresh_copy(USERS[0]).pseudo_rand_gen is secure_pseudo_rand_gen


def test_install_also_catches_other_flwr_modules_bound_to_flwrs_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stray = ModuleType("flwr._stray_secagg_user")
    stray.pseudo_rand_gen = FLWR_GEN  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, stray.__name__, stray)
    install_secure_masks()
    assert stray.pseudo_rand_gen is secure_pseudo_rand_gen  # type: ignore[attr-defined]


@pytest.mark.parametrize("app", ["client.app", "server.federation.app"])
def test_each_app_module_installs_the_generator_and_the_sharing_on_import(app: str) -> None:
    """In a fresh interpreter, as a device or the server would import it, alone: the masks,
    Shamir's sharing (``common.federation.prime_shamir``) and the key agreement
    (``common.federation.x25519_keys``) must match on both sides."""
    code = (
        f"import {app}\n"
        "from common.federation.secure_masks import secure_masks_installed\n"
        "from common.federation.prime_shamir import prime_shamir_installed\n"
        "from common.federation.x25519_keys import x25519_keys_installed\n"
        "assert secure_masks_installed()\n"
        "assert prime_shamir_installed()\n"
        "assert x25519_keys_installed()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
