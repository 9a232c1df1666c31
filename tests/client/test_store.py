import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from client import store as store_module
from client.store import (
    KEY_ENV,
    STATE_FILE,
    DeviceStore,
    DeviceStoreError,
    PersonalState,
    generate_key,
    load_key,
    write_key_file,
)
from common.security.keyfiles import KeyFileError

DIM = 8


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _state(seed: int) -> PersonalState:
    rng = np.random.default_rng(seed)
    return PersonalState(
        user_vector=rng.standard_normal(DIM).astype(np.float32),
        accountant={"history": [[1.1, 0.05, 30]], "mechanism": "rdp"},
        info={"rounds": seed},
    )


def test_round_trip_search_log_and_state(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    rng = np.random.default_rng(0)
    q = rng.standard_normal(DIM).astype(np.float32)
    shown = rng.standard_normal((3, DIM)).astype(np.float32)
    first = store.log_search("black watch", q, ["a", "b", "c"], shown, model_version="v0002")
    store.log_search("", q, [], np.zeros((0, DIM)))  # image search with no results
    store.log_click(first.search_id, "b")

    log = store.searches()
    assert [e.clicked for e in log] == ["b", None]
    assert log[0].shown == ("a", "b", "c") and log[0].model_version == "v0002"
    np.testing.assert_array_equal(log[0].query_vector, q)
    np.testing.assert_array_equal(log[0].shown_vectors, shown)
    assert log[1].shown_vectors.shape == (0, DIM)

    state = _state(3)
    store.save_state(state)
    back = store.load_state()
    np.testing.assert_array_equal(back.user_vector, state.user_vector)
    assert back.accountant == state.accountant and back.info == {"rounds": 3}


def test_a_state_written_with_a_personal_head_still_loads(tmp_path: Path) -> None:
    """Stores written before the unused personal head was dropped hold ``head_len`` and
    ``head_<i>`` entries; they load, and the next write leaves the head out."""
    store = DeviceStore(tmp_path, generate_key())
    user = np.arange(DIM, dtype=np.float32)
    old_meta = {"head_len": 1, "accountant": {"mechanism": "rdp"}, "info": {"rounds": 2}}
    store._write(STATE_FILE, old_meta, {"head_0": np.ones((4, DIM)), "user_vector": user})

    state = store.load_state()
    np.testing.assert_array_equal(state.user_vector, user)
    assert state.accountant == {"mechanism": "rdp"} and state.info == {"rounds": 2}

    store.save_state(state)
    meta, arrays = store._read(STATE_FILE, {})
    assert meta == {"accountant": {"mechanism": "rdp"}, "info": {"rounds": 2}}
    assert set(arrays) == {"user_vector"}


def test_nothing_readable_on_disk(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    store.log_search("secret query words", np.ones(DIM), ["item-123"], np.ones((1, DIM)))
    raw = (tmp_path / "searches.enc").read_bytes()
    assert b"secret query" not in raw and b"item-123" not in raw


def test_click_on_unknown_search_or_item_is_refused(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    entry = store.log_search("q", np.ones(DIM), ["a"], np.ones((1, DIM)))
    with pytest.raises(KeyError, match="unknown search_id"):
        store.log_click("nope", "a")
    with pytest.raises(KeyError, match="was not shown"):
        store.log_click(entry.search_id, "zzz")
    assert store.searches()[0].clicked is None


def test_wrong_key_gives_clear_error(tmp_path: Path) -> None:
    DeviceStore(tmp_path, generate_key()).save_state(_state(1))
    with pytest.raises(DeviceStoreError, match="wrong store key"):
        DeviceStore(tmp_path, generate_key()).load_state()


def test_swapped_files_are_refused(tmp_path: Path) -> None:
    key = generate_key()
    store = DeviceStore(tmp_path, key)
    store.save_state(_state(1))
    os.replace(tmp_path / STATE_FILE, tmp_path / "searches.enc")
    with pytest.raises(DeviceStoreError, match="cannot decrypt"):
        store.searches()


def test_key_from_env_and_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "store.key"
    key = write_key_file(key_file)
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert load_key(key_file) == key
    with pytest.raises(DeviceStoreError, match="refusing to overwrite"):
        write_key_file(key_file)

    os.chmod(key_file, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(key_file)

    monkeypatch.setenv(KEY_ENV, base64.b64encode(key).decode())
    assert load_key(None) == key  # the environment wins over the file
    monkeypatch.setenv(KEY_ENV, "not base64!")
    with pytest.raises(DeviceStoreError, match="not valid base64"):
        load_key(None)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(b"short").decode())
    with pytest.raises(DeviceStoreError, match="must be 32 bytes"):
        load_key(None)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(DeviceStoreError, match="no store key"):
        load_key(None)


def test_write_interrupted_midway_keeps_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeviceStore(tmp_path, generate_key())
    store.save_state(_state(1))
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data: bytes) -> None:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError("simulated crash midway through the write")

    monkeypatch.setattr(
        store_module.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode))
    )
    with pytest.raises(OSError, match="simulated crash"):
        store.save_state(_state(2))
    monkeypatch.undo()

    assert store.load_state().info == {"rounds": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", STATE_FILE]


_WRITER = """
import sys, numpy as np
from client.store import DeviceStore, PersonalState
store = DeviceStore(sys.argv[1], bytes.fromhex(sys.argv[2]))
i = 0
while True:
    i += 1
    store.save_state(PersonalState(user_vector=np.full(400_000, i, np.float32), info={"i": i}))
    if i == 1:
        print("ready", flush=True)
"""


def test_killed_writer_never_leaves_a_corrupt_store(tmp_path: Path) -> None:
    key = generate_key()
    leftovers: set[str] = set()
    for delay in (0.05, 0.3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), key.hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
        leftovers.update(p.name for p in tmp_path.glob(".*.tmp"))
        state = DeviceStore(tmp_path, key).load_state()
        assert state.info["i"] >= 1
        assert np.all(state.user_vector == state.info["i"])
    print("temp files left by killed writers:", leftovers)
    DeviceStore(tmp_path, key).save_state(PersonalState())
    assert not list(tmp_path.glob(".*.tmp"))  # cleaned up under the lock by the next writer


def test_concurrent_updates_are_not_lost(tmp_path: Path) -> None:
    key = generate_key()
    DeviceStore(tmp_path, key).save_state(PersonalState(info={"n": 0}))

    def bump() -> None:
        store = DeviceStore(tmp_path, key)
        for _ in range(15):
            store.update_state(lambda s: PersonalState(info={"n": s.info["n"] + 1}))

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert DeviceStore(tmp_path, key).load_state().info["n"] == 30
