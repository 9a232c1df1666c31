"""Crash safety of the SQLite catalog store: a writer killed with SIGKILL at random moments."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from server.search.catalog import Catalog, Item

ROOT = Path(__file__).resolve().parents[3]
DIM = 16
KILLS = 20

WRITER = """
import sys, threading, time
import numpy as np
from server.search.catalog import Catalog, Item

def vector(item_id):
    import hashlib
    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")
    v = np.random.default_rng(seed).standard_normal({dim}).astype(np.float32)
    return v / np.linalg.norm(v)

catalog = Catalog.open(sys.argv[1])
life = sys.argv[2]
print_lock = threading.Lock()

def writer(t):
    n = 0
    while True:
        ids = [f"{{life}}-{{t}}-{{n + j}}" for j in range(1 + n % 3)]
        n += len(ids)
        catalog.upsert([Item(id=i, title=i, attributes={{"life": life}}) for i in ids],
                       np.stack([vector(i) for i in ids]))
        with print_lock:
            print("ack", *ids, flush=True)

def compactor():
    while True:
        time.sleep(0.01)
        catalog.compact()

for t in range(3):
    threading.Thread(target=writer, args=(t,), daemon=True).start()
threading.Thread(target=compactor, daemon=True).start()
time.sleep(60)
"""


def vector(item_id: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def run_and_kill(store: Path, life: str, delay: float) -> list[str]:
    """Start a writer, SIGKILL it ``delay`` seconds after its first acknowledged upsert;
    return the ids it acknowledged."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(dim=DIM), str(store), life],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: list[str] = []
    writing = threading.Event()

    def read() -> None:
        for line in child.stdout:
            if line.startswith("ack ") and line.endswith("\n"):  # a whole line: acked
                acked.extend(line.split()[1:])
                writing.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert writing.wait(60), "the writer acknowledged nothing"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.join()
    return acked


def test_kill_9_at_random_moments_loses_no_acknowledged_upsert(tmp_path):
    store = tmp_path / "store"
    items = [Item(id=f"seed{i}", title="seed") for i in range(5)]
    Catalog.create(store, items, np.stack([vector(it.id) for it in items]), encoder_version="e")
    Catalog.open(store).close()
    rng = random.Random(7)
    acked_total: list[str] = []
    for life in range(KILLS):
        acked = run_and_kill(store, f"L{life}", rng.uniform(0.0, 0.4))
        acked_total += acked
        catalog = Catalog.open(store)  # always opens
        try:
            missing = [i for i in acked_total if catalog.get(i) is None]
            assert missing == [], f"life {life}: lost acknowledged upserts {missing[:5]}"
            last = acked[-3:]
            np.testing.assert_allclose(catalog.vectors_of(last), [vector(i) for i in last])
            assert catalog.index.ntotal == len(catalog)
            found, _, _ = catalog.search(vector(acked[-1]), 1)
            assert found[0].id == acked[-1]
            catalog.upsert([Item(id=f"after{life}", title="a")], vector("x")[None])  # writable
        finally:
            catalog.close()
    assert len(acked_total) > KILLS * 5
